"""Prompts, labels and generation as the release has them.

- Llama-3 tokenizer: the Higgs special tokens at the release's reserved ids.
- Layout and labels equal the ORIGINAL code's (prepare_chatml_sample + HiggsAudioSampleCollator +
  merge_input_ids_with_audio_features), read from tests/fixtures/release/collator/ (written by
  scripts/release_fixtures/collator.py in the throwaway venv).
- input_ids / audio codes / audio mask equal the transformers port's processor's (delay token in
  the last K-1 positions of a finished stream).
- The engine's greedy frames: unchanged by the new prompt code where the prompt's model inputs are
  unchanged, and equal to the port's generate() from the same prompt and weights.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from higgs_train.llm.delay import strip_stream
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.delay import IGNORE
from higgs_train.llm.model import DualFFNModel
from higgs_train.llm.prompt import Message, encode_chat, system_message
from higgs_train.llm.text_tokenizer import DELAY_TOKEN, load_text_tokenizer, special_token_ids

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/conftest.py

FIX = Path(__file__).parent / "fixtures/release/collator"
K = 8
LLAMA3_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                  "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                  "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"]
RELEASE = {"audio_bos": 128011, "audio_eos": 128012, "audio_out_bos": 128013, "audio_delay": 128014,
           "audio_in": 128015, "audio_out": 128016, "pad": 128001}


def write_llama3_tokenizer(out_dir) -> Path:
    """A Llama-3-shaped tokenizer: 128000 byte-level BPE entries, then the 256 special tokens of
    Llama-3 (reserved_special_token_3.. at 128011..), as meta-llama/Llama-3.2-3B has them."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab.update({f"Ġw{i}": i for i in range(len(vocab), 128000)})
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    names = LLAMA3_SPECIAL + [f"<|reserved_special_token_{i}|>" for i in range(3, 3 + 256 - len(LLAMA3_SPECIAL))]
    bpe.add_special_tokens(names)
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>",
                            eos_token="<|eot_id|>").save_pretrained(str(out_dir))
    return Path(out_dir)


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    return load_text_tokenizer(write_llama3_tokenizer(tmp_path_factory.mktemp("llama3")))


def test_llama3_tokenizer_gets_the_release_ids(llama3, tmp_path):
    tok = llama3
    assert special_token_ids(tok) == RELEASE
    assert len(tok) == 128256                       # renamed in place: nothing appended
    ids = {t: tok.convert_tokens_to_ids(t) for t in ("<|scene_desc_start|>", "<|scene_desc_end|>", "<|eot_id|>")}
    assert ids == {"<|scene_desc_start|>": 128018, "<|scene_desc_end|>": 128019, "<|eot_id|>": 128009}
    assert tok.encode("a<|AUDIO_OUT|><|audio_out_bos|>", add_special_tokens=False)[1:] == [128016, 128013]
    tok.save_pretrained(str(tmp_path))             # what an export holds: loads with the same ids
    assert special_token_ids(load_text_tokenizer(tmp_path)) == RELEASE


# ---------------------------------------------------------------- the original collator


def _ours(tok, case) -> "Sample":  # noqa: F821
    start = case["start_index"]
    msgs = [Message(m["role"], m["text"], None if m["codes"] is None else np.asarray(m["codes"]),
                    supervised=m["role"] == "assistant" and (start is None or i >= start))
            for i, m in enumerate(case["messages"])]
    return encode_chat(tok, msgs, K, 1024)


@pytest.fixture(scope="module")
def collator_cases():
    if not (FIX / "cases.json").is_file():
        pytest.fail(f"{FIX / 'cases.json'} is missing: run scripts/release_fixtures/collator.py in the release venv")
    return json.loads((FIX / "cases.json").read_text()), load_text_tokenizer(FIX / "tokenizer")


@pytest.mark.parametrize("name", ["tts_scene", "clone", "dialogue", "audio_in", "clone_all_supervised"])
def test_layout_and_labels_equal_the_original_collator(collator_cases, name):
    cases, tok = collator_cases
    case, o = cases[name], cases[name]["original"]
    s = _ours(tok, case)
    a_in, a_out, delay = (tok.convert_tokens_to_ids(t) for t in ("<|AUDIO|>", "<|AUDIO_OUT|>", DELAY_TOKEN))
    in_mask, out_mask = np.asarray(o["audio_in_mask"]), np.asarray(o["audio_out_mask"])
    # the expanded sequence the original model runs on (it writes <|AUDIO_OUT|> where the port writes
    # the delay token; both models read only the codes there)
    ids = s.input_ids.copy()
    ids[ids == delay] = a_out
    assert ids.tolist() == o["expanded_input_ids"]
    assert np.array_equal(s.audio_mask, in_mask | out_mask)
    # the collator's own sequence: one placeholder per stream
    starts = s.audio_mask & ~np.r_[False, s.audio_mask[:-1]]
    assert s.input_ids[starts | ~s.audio_mask].tolist() == o["input_ids"]
    # codes: the collator's delayed, BOS/EOS-framed streams, position for position
    assert np.array_equal(s.audio_codes[out_mask], np.asarray(o["audio_out_ids"]).T)
    if in_mask.any():
        assert np.array_equal(s.audio_codes[in_mask], np.asarray(o["audio_in_ids"]).T)
    # labels: the original's (unshifted: label at t = token at t) shifted by one
    text = np.asarray(o["expanded_labels"])
    assert s.text_labels[:-1].tolist() == text[1:].tolist() and s.text_labels[-1] == IGNORE
    audio = np.full((len(s), K), IGNORE)
    audio[out_mask] = np.asarray(o["label_audio_ids"]).T
    assert np.array_equal(s.audio_labels[:-1], audio[1:]) and (s.audio_labels[-1] == IGNORE).all()
    # the release's convention in numbers: each supervised stream's EOS once per codebook, no BOS
    n_sup = sum(m["role"] == "assistant" and (case["start_index"] is None or i >= case["start_index"])
                for i, m in enumerate(case["messages"]))
    assert ((s.audio_labels == 1025).sum(0) == n_sup).all() and not (s.audio_labels == 1024).any()


# ---------------------------------------------------------------- the transformers port's processor


@pytest.fixture(scope="module")
def port_processor(llama3):
    from transformers import (DacFeatureExtractor, HiggsAudioV2Processor, HiggsAudioV2TokenizerConfig,
                              HiggsAudioV2TokenizerModel)

    torch.manual_seed(0)
    cfg = HiggsAudioV2TokenizerConfig(
        target_bandwidths=[2], codebook_dim=8,    # 8 codebooks at 25 frames/s
        acoustic_model_config={"encoder_hidden_size": 4, "decoder_hidden_size": 8, "hidden_size": 8,
                               "downsampling_ratios": [8, 5, 4, 2, 3], "upsampling_ratios": [8, 5, 4, 2, 3]},
        semantic_model_config={"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                               "intermediate_size": 32, "conv_dim": [8] * 7, "num_conv_pos_embeddings": 16,
                               "num_conv_pos_embedding_groups": 2})
    codec = HiggsAudioV2TokenizerModel(cfg).eval()
    return HiggsAudioV2Processor(DacFeatureExtractor(sampling_rate=24000, hop_length=960), llama3, codec)


def test_prompt_equals_the_port_processor(llama3, port_processor):
    """System + scene, a voice-cloning reference turn, a [SPEAKERn] dialogue, the generation prompt."""
    scene = "Audio is recorded from a quiet room."
    ref_text, text = "a voice speaks here.", "[SPEAKER0] hello there [SPEAKER1] how are you?"
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    prompt = ("<|begin_of_text|>" + header.format("system") + "Generate audio following instruction.\n\n"
              f"<|scene_desc_start|>\n{scene}\n<|scene_desc_end|><|eot_id|>"
              + header.format("user") + ref_text + "<|eot_id|>"
              + header.format("assistant") + "<|audio_out_bos|><|AUDIO_OUT|><|audio_eos|><|eot_id|>"
              + header.format("user") + text + "<|eot_id|>" + header.format("assistant") + "<|audio_out_bos|>")
    wav = np.random.default_rng(0).standard_normal(24000 * 6 // 25).astype(np.float32)   # 6 frames
    with torch.no_grad():
        port = port_processor(text=prompt, audio=[wav], return_tensors="pt", add_special_tokens=False)
    p_ids = port["input_ids"][0]
    p_codes = port["audio_input_ids"][0][port["audio_input_ids_mask"][0]]                # [N, K] delayed
    ref_codes = strip_stream(p_codes.T, 1024, 1025)                                       # what the codec gave
    assert ref_codes.shape == (K, 6)
    s = encode_chat(llama3, [system_message(scene), Message("user", ref_text),
                             Message("assistant", codes=ref_codes.numpy()), Message("user", text)],
                    K, 1024, generation=True)
    assert s.input_ids.tolist() == p_ids.tolist()
    port_mask = (p_ids == 128016) | (p_ids == 128014)
    assert np.array_equal(s.audio_mask, port_mask.numpy())
    assert (p_ids[port_mask][-7:] == 128014).all()                                       # the delay token
    assert np.array_equal(s.audio_codes[s.audio_mask], p_codes.numpy())


# ---------------------------------------------------------------- generation


OLD_SPECIAL = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
               "<|scene_desc_start|>", "<|scene_desc_end|>", "<|audio_bos|>", "<|audio_eos|>", "<|audio_out_bos|>",
               "<|AUDIO|>", "<|AUDIO_OUT|>"]
# frames of the engine before the release prompts (commit 8e7f84f, fp32 greedy) on the tiny model
# and prompts of _tiny_engine: sha256 of the int64 frames, and their shape
BEFORE = {"plain": ("9aaf925569bf8896e00afc502dfdfdd73c356fc339936bf613fdccd66af36e75", (8, 20)),
          "clone": ("93641217ba05b3c0b873339adc5d664b96f391f55328ae7885d60da78270d857", (8, 8))}


def _tiny_engine(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig
    from inference.engine import Engine
    from higgs_train.testing.tiny_exports import TINY_CODEC, TINY_LLM

    # the special tokens the BPE had before the delay token existed: same ids, so the same prompt
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    tr = trainers.BpeTrainer(vocab_size=300, special_tokens=OLD_SPECIAL, show_progress=False,
                             initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(["hello there, how are you today? a voice speaks here."] * 4, trainer=tr)
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                            pad_token="<|end_of_text|>").save_pretrained(str(tmp_path))
    torch.manual_seed(0)
    model = DualFFNModel(DualFFNConfig(vocab_size=320, **TINY_LLM)).eval()
    return Engine(model, AudioTokenizer(TokenizerConfig(**TINY_CODEC)), load_text_tokenizer(tmp_path))


def _greedy(engine, refs, frames=20):
    from inference.engine import Row
    from inference.sampling import SamplingConfig

    ids, codes, amask = engine.prompts.generation("hello there, how are you today?", refs, [], scene="a quiet room")
    s = SamplingConfig(temperature=0, max_frames=frames, seed=0)
    [out] = engine.generate_codes([Row(ids, codes, amask, s, torch.Generator().manual_seed(0))])
    return ids, codes, amask, out


def _reference(seed: int = 1):
    from inference.engine import Reference

    return Reference("a voice speaks here.",
                     torch.randint(0, 1024, (8, 6), generator=torch.Generator().manual_seed(seed)))


def test_engine_frames_unchanged_where_the_model_inputs_are(tmp_path):
    engine = _tiny_engine(tmp_path)
    delay = engine.tok.convert_tokens_to_ids(DELAY_TOKEN)
    for name, refs in (("plain", []), ("clone", [_reference()])):
        ids, codes, amask, frames = _greedy(engine, refs)
        assert (ids == delay).sum() == (7 if refs else 0)     # only ids the model does not read changed
        assert amask[-1] and (codes[-1] == 1024).all()         # the BOS frame, fed after <|audio_out_bos|>
        assert (hashlib.sha256(frames.numpy().astype(np.int64).tobytes()).hexdigest(), tuple(frames.shape)) \
            == BEFORE[name], name


def test_greedy_frames_equal_the_port_generate(tmp_path):
    """20 frames from the same prompt (a voice-cloning reference in it) and the same tiny random
    weights: our Engine vs HiggsAudioV2ForConditionalGeneration.generate (weights via save_llm 'hf')."""
    from transformers import HiggsAudioV2ForConditionalGeneration

    from higgs_train.llm.delay import revert_delay
    from higgs_train.llm.checkpoints import save_llm

    engine = _tiny_engine(tmp_path / "tok")
    engine.tok.save_pretrained(str(tmp_path / "tok"))        # with the delay token the export states
    # Frame 20 of codebook 7 is at stream position 27. max_frames=27: our engine forces no EOS before
    # position 28; reference seed 5: a prompt after which the random model draws no stream EOS either
    # up to there (27 frames come back). After a drawn EOS the two differ by design: the original
    # engine and ours force the earlier codebooks to EOS at once, the port one step later.
    ids, codes, amask, ours = _greedy(engine, [_reference(5)], frames=27)
    save_llm(engine.model, tmp_path / "hf", "hf", tokenizer_dir=tmp_path / "tok")
    port = HiggsAudioV2ForConditionalGeneration.from_pretrained(str(tmp_path / "hf"), use_text_head=True).eval()
    P = len(ids) - 1                                           # the port's prompt ends with <|audio_out_bos|>
    am = amask[:P]
    with torch.no_grad():
        out = port.generate(input_ids=ids[None, :P], audio_input_ids=codes[None, :P][:, am],
                            audio_input_ids_mask=torch.ones(1, int(am.sum()), dtype=torch.bool),
                            attention_mask=torch.ones(1, P, dtype=torch.long),
                            do_sample=False, max_new_tokens=1 + 20 + K - 1)
    gen = out[0, int(am.sum()):]                                # [1 + 27, K]: the BOS frame it emits, then 27
    assert (gen[0] == 1024).all()
    frames = revert_delay(gen.T)[:, 1:]                         # frames 1..20
    assert frames.shape == (K, 20) and frames.max() < 1024      # no stream BOS/EOS drawn: all 20 comparable
    assert ours.shape == (K, 27)
    assert torch.equal(frames, ours[:, :20])


def test_summed_codebook_loss_equals_the_port_loss(tmp_path):
    """codebook_reduction=sum on our labels is the port's loss on the same (unshifted) labels."""
    from transformers import HiggsAudioV2ForConditionalGeneration

    from higgs_train.llm.checkpoints import save_llm
    from higgs_train.llm.prompt import clone_sample

    engine = _tiny_engine(tmp_path / "tok")
    engine.tok.save_pretrained(str(tmp_path / "tok"))
    save_llm(engine.model, tmp_path / "hf", "hf", tokenizer_dir=tmp_path / "tok")
    port = HiggsAudioV2ForConditionalGeneration.from_pretrained(str(tmp_path / "hf"), use_text_head=True).eval()
    g = torch.Generator().manual_seed(2)
    s = clone_sample(engine.tok, "a voice speaks here.", torch.randint(0, 1024, (8, 5), generator=g).numpy(),
                     "hello there", torch.randint(0, 1024, (8, 7), generator=g).numpy())
    ids, codes, mask = (torch.from_numpy(x)[None] for x in (s.input_ids, s.audio_codes, s.audio_mask))
    labels = torch.from_numpy(s.audio_labels)[None]
    pos = mask[0].nonzero()[:, 0]
    with torch.no_grad():
        ours = {r: engine.model.loss(ids, codes, mask, labels, codebook_reduction=r)["loss"] for r in ("sum", "mean")}
        theirs = port(input_ids=ids, audio_input_ids=codes[:, pos], audio_labels=labels[:, pos - 1],
                      audio_input_ids_mask=torch.ones(1, len(pos), dtype=torch.bool)).loss
    assert abs(ours["sum"].item() - theirs.item()) < 1e-4
    assert abs(ours["mean"].item() - theirs.item()) > 1.0                       # mean is not the port's loss


def test_engine_refuses_a_tokenizer_whose_ids_differ_from_the_config(tmp_path):
    from dataclasses import replace

    from inference.engine import Engine

    engine = _tiny_engine(tmp_path)
    ids = special_token_ids(engine.tok)
    Engine(engine.model, engine.codec, engine.tok)                       # no stated ids: the tokenizer's
    engine.model.cfg = replace(engine.model.cfg, special_tokens=ids)
    Engine(engine.model, engine.codec, engine.tok)                       # the same ids: fine
    engine.model.cfg = replace(engine.model.cfg, special_tokens={**ids, "audio_out": RELEASE["audio_out"]})
    with pytest.raises(ValueError, match=r"special_tokens .*'audio_out': \(128016, 11\)"):
        Engine(engine.model, engine.codec, engine.tok)


def test_chat_template_renders_the_same_prompt(llama3, port_processor):
    """CHAT_TEMPLATE (what an hf export carries) through processor.apply_chat_template == encode_chat."""
    from higgs_train.llm.prompt import CHAT_TEMPLATE

    wav = np.random.default_rng(1).standard_normal(24000 * 5 // 25).astype(np.float32)   # 5 frames
    conversation = [
        {"role": "system", "content": [{"type": "text", "text": "Generate audio following instruction."}]},
        {"role": "scene", "content": [{"type": "text", "text": "Audio is recorded from a quiet room."}]},
        {"role": "user", "content": [{"type": "text", "text": "a voice speaks here."}]},
        {"role": "assistant", "content": [{"type": "audio", "audio": wav}]},
        {"role": "user", "content": "[SPEAKER0] hello there [SPEAKER1] how are you?"},
    ]
    with torch.no_grad():
        port = port_processor.apply_chat_template(conversation, chat_template=CHAT_TEMPLATE, tokenize=True,
                                                  return_dict=True, add_generation_prompt=True, return_tensors="pt",
                                                  processor_kwargs={"add_special_tokens": False})
    p_codes = port["audio_input_ids"][0][port["audio_input_ids_mask"][0]]
    s = encode_chat(llama3, [system_message("Audio is recorded from a quiet room."), Message("user", "a voice speaks here."),
                             Message("assistant", codes=strip_stream(p_codes.T, 1024, 1025).numpy()),
                             Message("user", "[SPEAKER0] hello there [SPEAKER1] how are you?")], K, 1024,
                    generation=True)
    assert port["input_ids"][0].tolist() == s.input_ids.tolist()
    assert np.array_equal(s.audio_codes[s.audio_mask], p_codes.numpy())
