"""Samples laid out and labelled by the ORIGINAL code (prepare_chatml_sample + HiggsAudioSampleCollator
+ the model's merge_input_ids_with_audio_features), for tests/test_llm_prompt_release.py.

    /tmp/boson_venv/bin/python scripts/release_fixtures/collator.py

Writes tests/fixtures/release/collator/
  tokenizer/        a small byte-level BPE with the Higgs special tokens (what both sides tokenize with)
  cases.json        per case: the conversation (roles, texts, codes, start_index) and what the original
                    code made of it: the collator's input_ids / label_ids (one <|AUDIO|>/<|AUDIO_OUT|>
                    per stream), audio_out_ids, label_audio_ids, audio_in_ids, and the expanded sequence
                    (input ids, text labels, audio-in / audio-out masks) the original model runs on.
The collator is configured as the release's training and serving use it: use_delay_pattern=True,
audio streams framed with stream BOS 1024 / EOS 1025, audio-in codes returned (encode_audio_in_tokens),
no whisper features (skip_audio_tower), 8 codebooks. Deterministic (seeded).
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import torch

import common

OUT = os.path.join(common.FIXTURES, "collator")
K, BOS, EOS = 8, 1024, 1025
# higgs_train.llm.text_tokenizer.SPECIAL_TOKENS (the BPE keeps these ids: 0..12)
SPECIAL_TOKENS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                  "<|eot_id|>", "<|scene_desc_start|>", "<|scene_desc_end|>", "<|audio_bos|>", "<|audio_eos|>",
                  "<|audio_out_bos|>", "<|AUDIO|>", "<|AUDIO_OUT|>", "<|reserved_special_token_6|>"]
SYSTEM = "Generate audio following instruction."
SCENE = f"{SYSTEM}\n\n<|scene_desc_start|>\nAudio is recorded from a quiet room.\n<|scene_desc_end|>"


def make_tokenizer(out_dir):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([SCENE, "[SPEAKER0] hello there [SPEAKER1] hi, how are you? the quick brown fox"] * 4,
                            trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|end_of_text|>")
    fast.save_pretrained(out_dir)
    return fast


def cases(rng):
    c = lambda n: rng.integers(0, 1024, (K, n))  # noqa: E731
    return {
        # TTS with a scene description
        "tts_scene": ([("system", SCENE, None), ("user", "the quick brown fox", None),
                       ("assistant", None, c(5))], 2),
        # voice cloning: reference transcript + reference audio (context), then the target turn
        "clone": ([("system", SYSTEM, None), ("user", "hello there", None), ("assistant", None, c(4)),
                   ("user", "how are you?", None), ("assistant", None, c(6))], 4),
        # dialogue: [SPEAKERn] tags, the turns' codes back to back
        "dialogue": ([("system", SCENE, None), ("user", "[SPEAKER0] hello there [SPEAKER1] hi", None),
                      ("assistant", None, c(7))], 2),
        # an audio-in reference (<|audio_bos|><|AUDIO|><|audio_eos|> after the user text)
        "audio_in": ([("system", SYSTEM, None), ("user", "hello there", c(3)), ("assistant", None, c(4))], 2),
        # every assistant turn supervised (start_index None)
        "clone_all_supervised": ([("system", SYSTEM, None), ("user", "hi", None), ("assistant", None, c(3)),
                                  ("user", "the fox", None), ("assistant", None, c(2))], None),
    }


def original(tok, messages, start_index):
    from boson_multimodal.data_collator.higgs_audio_collator import HiggsAudioSampleCollator
    from boson_multimodal.data_types import AudioContent, ChatMLSample, Message, TextContent
    from boson_multimodal.dataset.chatml_dataset import ChatMLDatasetSample, prepare_chatml_sample
    from boson_multimodal.model.higgs_audio.utils import merge_input_ids_with_audio_features

    msgs, codes = [], []
    for role, text, audio in messages:
        content = ([TextContent(text)] if text else []) + ([AudioContent(audio_url="")] if audio is not None else [])
        msgs.append(Message(role=role, content=content))
        if audio is not None:
            codes.append(torch.as_tensor(audio, dtype=torch.long))
    input_tokens, label_tokens, _, _ = prepare_chatml_sample(ChatMLSample(messages=msgs, start_index=start_index), tok)
    starts = np.cumsum([0] + [x.shape[1] for x in codes[:-1]])
    sample = ChatMLDatasetSample(
        input_ids=torch.tensor(input_tokens), label_ids=torch.tensor(label_tokens),
        audio_ids_concat=torch.cat(codes, 1), audio_ids_start=torch.tensor(starts, dtype=torch.long),
        audio_waveforms_concat=torch.zeros(0), audio_waveforms_start=torch.zeros(0, dtype=torch.long),
        audio_sample_rate=torch.zeros(0), audio_speaker_indices=torch.zeros(0, dtype=torch.long))
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|AUDIO_OUT|>", "<|end_of_text|>")}
    col = HiggsAudioSampleCollator(
        whisper_processor=None, audio_in_token_id=ids["<|AUDIO|>"], audio_out_token_id=ids["<|AUDIO_OUT|>"],
        pad_token_id=ids["<|end_of_text|>"], audio_stream_bos_id=BOS, audio_stream_eos_id=EOS, round_to=1,
        encode_whisper_embed=False, return_audio_in_tokens=True, audio_num_codebooks=K, use_delay_pattern=True)
    b = col([sample])
    # what the original model runs on: the placeholders expanded (embeddings are not compared: zeros)
    n_in, n_out = b.audio_in_ids.shape[-1], b.audio_out_ids.shape[-1]
    merged = merge_input_ids_with_audio_features(
        None, None, torch.zeros(n_in, 4) if n_in else None, b.audio_in_ids_start, torch.zeros(n_out, 4),
        b.audio_out_ids_start, ids["<|AUDIO|>"], ids["<|AUDIO_OUT|>"], torch.zeros(*b.input_ids.shape, 4),
        b.input_ids, b.attention_mask, b.label_ids, pad_token_id=ids["<|end_of_text|>"], round_to=1,
        left_padding=False)
    _, _, labels, _, exp_ids, in_mask, in_codes_mask, out_mask = merged
    return {"input_ids": b.input_ids[0].tolist(), "label_ids": b.label_ids[0].tolist(),
            "audio_out_ids": b.audio_out_ids.tolist(), "audio_out_ids_start": b.audio_out_ids_start.tolist(),
            "label_audio_ids": b.label_audio_ids.tolist(), "audio_in_ids": b.audio_in_ids.tolist(),
            "expanded_input_ids": exp_ids[0].tolist(), "expanded_labels": labels[0].tolist(),
            "audio_in_mask": in_codes_mask[0].tolist(), "audio_out_mask": out_mask[0].tolist()}


def main():
    common.seed_everything()
    shutil.rmtree(OUT, ignore_errors=True)
    os.makedirs(OUT)
    tok = make_tokenizer(os.path.join(OUT, "tokenizer"))
    out = {}
    for name, (messages, start_index) in cases(np.random.default_rng(common.SEED)).items():
        out[name] = {"messages": [{"role": r, "text": t, "codes": None if a is None else a.tolist()}
                                  for r, t, a in messages],
                     "start_index": start_index, "original": original(tok, messages, start_index)}
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump(out, f)
    print(f"wrote {len(out)} cases to {OUT}")


if __name__ == "__main__":
    main()
