"""Higgs TTS 3 parity fixtures, made by the REFERENCE code (sglang-omni 0.1.9; mlx-audio 0.6.2 as a
cross-check), in the throwaway venv of setup_venv.sh here:

    /tmp/v3_venv/bin/python scripts/release_fixtures/v3/write.py

Writes tests/fixtures/release_v3/ (README.md there says what each file holds):
  tiny/             a tiny random v3 checkpoint in the release layout: config.json (text_config
                    rope_theta null), model.safetensors (release names, with a tiny audio
                    tokenizer bundled under tied.embedding.modality_embeddings.0.model.* in
                    transformers' HiggsAudioV2TokenizerModel names), tokenizer.json +
                    tokenizer_config.json (byte-level BPE + the v3 specials in the added vocabulary),
                    codec_config.json: the bundled codec's HiggsAudioV2TokenizerConfig (the release
                    carries none: the reference packages the full-size one; our tokenizer loader
                    reads this file beside the weights, so the directory alone is a whole model)
  cases.json        prompt ids / token strings / special ids of a zero-shot and a cloning request,
  cases.safetensors the delayed frames, the reference's teacher-forced audio (and text) logits,
                    greedy frames and the stop step; the bundled codec's codes for a test waveform
  figures.json      mlx-audio vs sglang-omni max |diff| and the other cross-checks
Seeded; a rerun writes byte-identical files.
"""
from __future__ import annotations

import json
import os
import shutil
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as ref  # noqa: E402

OUT = ref.FIXTURES
N_CB, CB_VOCAB = 8, 1026
CODEC_PREFIX = "tied.embedding.modality_embeddings.0.model."
# Tiny Qwen3 backbone (release: 36 layers, hidden 2560, 32/8 heads, head_dim 128, ffn 9728).
TEXT = dict(model_type="qwen3", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, intermediate_size=128, hidden_act="silu",
            rms_norm_eps=1e-6, max_position_embeddings=512, attention_bias=False,
            tie_word_embeddings=True, rope_theta=None)   # null: the reference substitutes 1e6
SPECIALS = ["<|endoftext|>", "<|tts|>", "<|ref_text|>", "<|ref_audio|>", "<|text|>", "<|audio|>"]
CORPUS = ["Hello there. How are you today? I am fine, thanks!",
          "The quick brown fox jumps over the lazy dog.",
          "A short reference clip, spoken clearly.",
          "Higgs speaks the words it is given, in the voice it hears."]
CASES = {
    "zero_shot": dict(text="Hello there, how are you?", ref_text=None, ref_frames=0, frames=3),
    "clone": dict(text="The quick fox.", ref_text="A short reference clip.", ref_frames=6, frames=4),
}
GREEDY_STEPS = 40
# A bias on codebook 0's end-of-stream row, so the greedy loop reaches the stop rule within a few
# steps (see bias_stop): the fused table row 1025 gets this multiple of the mean normed hidden.
EOC_BIAS = 1.0
# Tiny bundled audio tokenizer (transformers HiggsAudioV2TokenizerConfig; release config in
# sglang_omni/models/higgs_tts/configs/higgs_audio_v2_tokenizer.json). Hop 960 kept (8*5*4*2*3).
CODEC = dict(codebook_dim=2, codebook_size=1024, downsample_factor=320, sample_rate=24000,
             semantic_sample_rate=16000, target_bandwidths=[0.5, 1, 1.5, 2], kernel_size=3,
             unit_kernel_size=3, channel_ratios=[1, 1], strides=[1, 1], block_dilations=[1, 1],
             acoustic_model_config=dict(model_type="dac", encoder_hidden_size=1, decoder_hidden_size=32,
                                        hidden_size=16, codebook_dim=8, n_codebooks=9,
                                        downsampling_ratios=[8, 5, 4, 2, 3], upsampling_ratios=[8, 5, 4, 2, 3],
                                        hop_length=960, sampling_rate=16000),
             semantic_model_config=dict(model_type="hubert", hidden_size=16, num_hidden_layers=1,
                                        num_attention_heads=1, intermediate_size=32, conv_dim=[8] * 7,
                                        conv_kernel=[10, 3, 3, 3, 3, 2, 2], conv_stride=[5, 2, 2, 2, 2, 2, 2],
                                        feat_extract_norm="group", num_conv_pos_embeddings=16,
                                        num_conv_pos_embedding_groups=4, mask_time_prob=0.0))


def write_tokenizer(d: str):
    """Byte-level BPE trained on CORPUS, the specials appended after it (added vocabulary, as in
    the release's Qwen3 tokenizer, whose specials also follow the BPE vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, min_frequency=1, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 4, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.add_special_tokens({"additional_special_tokens": SPECIALS[1:]})
    fast.save_pretrained(d)
    for extra in ("special_tokens_map.json",):   # the release directory holds tokenizer.json + _config
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    return len(fast)


def release_state(vocab: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Seeded random tensors under the release names (norms away from 1 so a mis-mapped norm shows)."""
    D, H, KV, HD, FF = (TEXT[k] for k in ("hidden_size", "num_attention_heads", "num_key_value_heads",
                                            "head_dim", "intermediate_size"))

    def rnd(*shape, std=0.05):
        return torch.randn(*shape, generator=g) * std

    def norm(n):
        return 1.0 + rnd(n, std=0.2)

    s = {"tied.embedding.text_embedding.weight": rnd(vocab, D, std=0.5)}
    for i in range(TEXT["num_hidden_layers"]):
        p = f"body.layers.{i}."
        s[p + "input_layernorm.weight"] = norm(D)
        s[p + "self_attn.q_proj.weight"] = rnd(H * HD, D, std=0.15)
        s[p + "self_attn.k_proj.weight"] = rnd(KV * HD, D, std=0.15)
        s[p + "self_attn.v_proj.weight"] = rnd(KV * HD, D, std=0.15)
        s[p + "self_attn.o_proj.weight"] = rnd(D, H * HD, std=0.15)
        s[p + "self_attn.q_norm.weight"] = norm(HD)
        s[p + "self_attn.k_norm.weight"] = norm(HD)
        s[p + "post_attention_layernorm.weight"] = norm(D)
        s[p + "mlp.gate_proj.weight"] = rnd(FF, D, std=0.15)
        s[p + "mlp.up_proj.weight"] = rnd(FF, D, std=0.15)
        s[p + "mlp.down_proj.weight"] = rnd(D, FF, std=0.15)
    s["body.norm.weight"] = norm(D)
    s["tied.embedding.modality_embeddings.0.embedding.weight"] = rnd(N_CB * CB_VOCAB, D, std=0.1)
    return s


def config(vocab: int) -> dict:
    return {"architectures": ["HiggsMultimodalQwen3ForConditionalGeneration"],
            "model_type": "higgs_multimodal_qwen3", "audio_token_id": -100,
            "audio_encoder_config": {"encoder_type": "discrete", "num_codebooks": N_CB, "vocab_size": CB_VOCAB,
                                     "tie_word_embeddings": True},
            "text_config": {**TEXT, "vocab_size": vocab}, "torch_dtype": "float32"}


def write_checkpoint(d: str, cfg: dict, state: dict) -> None:
    from safetensors.torch import save_file

    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in sorted(state.items())}, os.path.join(d, "model.safetensors"),
              metadata={"format": "pt"})


@torch.no_grad()
def bias_stop(state: dict, d: str, adapter) -> None:
    """Makes the greedy loop stop early: codebook 0's EOC row of the fused (tied) table is moved
    towards the mean final hidden state of a few prompts, so argmax picks 1025 for cb0 soon."""
    model, _ = ref.load_reference_model(d)
    hs = []
    for c in CASES.values():
        ids = adapter.build_prompt(c["text"])
        h = model.backbone.model(inputs_embeds=ref.prompt_embeds(model, ids, None)[None]).last_hidden_state[0]
        hs.append(h)
    mean = torch.cat(hs).mean(0)
    key = "tied.embedding.modality_embeddings.0.embedding.weight"
    state[key][ref.sglang_higgs().EOC_ID] += EOC_BIAS * mean / mean.norm()


def random_codes(T: int, g: torch.Generator) -> torch.Tensor:
    return torch.randint(0, 1024, (T, N_CB), generator=g)


def main() -> None:
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    ref.seed_everything()
    ns = ref.sglang_higgs()
    tiny = os.path.join(OUT, "tiny")
    shutil.rmtree(tiny, ignore_errors=True)    # its own outputs only (README.md, keys.json stay)
    os.makedirs(tiny)
    vocab_tok = write_tokenizer(tiny)
    vocab = (vocab_tok + 63) // 64 * 64     # padded past the tokenizer, as the release's 151,936
    cfg = config(vocab)
    g = torch.Generator().manual_seed(ref.SEED)
    state = release_state(vocab, g)
    write_checkpoint(tiny, cfg, state)
    adapter = ref.reference_tokenizer(tiny)
    bias_stop(state, tiny, adapter)
    write_checkpoint(tiny, cfg, bundle_codec(state, g))
    model, ns = ref.load_reference_model(tiny)
    ref.log(f"tiny/: vocab {vocab} (tokenizer {vocab_tok}), {len(state)} tensors")

    specials = {t: int(i) for t, i in sorted(adapter.tok.get_added_vocab().items())}
    cases, tensors = {}, {}
    for name, c in CASES.items():
        ref_codes = random_codes(c["ref_frames"], g) if c["ref_frames"] else None
        ref_delayed = ns.apply_delay_pattern(ref_codes) if ref_codes is not None else None
        ids = adapter.build_prompt(c["text"], num_ref_tokens=0 if ref_delayed is None else ref_delayed.shape[0],
                                   reference_text=c["ref_text"])
        codes = random_codes(c["frames"], g)
        frames = ns.apply_delay_pattern(codes)                 # [T + 7, 8]: BOC ... EOC
        audio_logits, text_logits = ref.teacher_forced(model, ids, ref_delayed, frames)
        gframes, gstate = ref.greedy(model, ns, ids, ref_delayed, GREEDY_STEPS)
        eoc_rows = (gframes[:, 0] == ns.EOC_ID).nonzero().flatten().tolist()
        cases[name] = {
            "text": c["text"], "ref_text": c["ref_text"], "prompt_ids": ids,
            "prompt_tokens": [None if i == ref.AUDIO_PLACEHOLDER_ID else adapter.tok.convert_ids_to_tokens(i)
                              for i in ids],
            "text_ids": adapter.tok.encode(c["text"], add_special_tokens=False),
            "ref_text_ids": adapter.tok.encode(c["ref_text"], add_special_tokens=False) if c["ref_text"] else None,
            "n_placeholders": ids.count(ref.AUDIO_PLACEHOLDER_ID),
            "frames_shape": list(frames.shape), "audio_logits_shape": list(audio_logits.shape),
            "greedy": {"steps_run": len(gframes), "max_steps": GREEDY_STEPS, "generation_done": gstate.generation_done,
                       "cb0_eoc_rows": eoc_rows,
                       "rule": "sglang_omni/models/higgs_tts/sampler.py:step (= batched_step_direct)"},
        }
        tensors[f"{name}.prompt_ids"] = torch.tensor(ids)
        if ref_codes is not None:
            tensors[f"{name}.ref_codes"] = ref_codes
            tensors[f"{name}.ref_delayed"] = ref_delayed
        tensors[f"{name}.codes"] = codes
        tensors[f"{name}.frames"] = frames
        tensors[f"{name}.audio_logits"] = audio_logits.float()
        tensors[f"{name}.text_logits"] = text_logits.float()
        tensors[f"{name}.greedy_frames"] = gframes
        tensors[f"{name}.action_mask"] = ns.delay_pattern_action_mask(frames).to(torch.uint8)
        ref.log(f"{name}: prompt {len(ids)} ids, greedy {len(gframes)} steps, done={gstate.generation_done}, "
                f"cb0 EOC rows {eoc_rows}")

    figures = {"reference_rope": {"config_rope_theta": cfg["text_config"]["rope_theta"],
                                  "loaded_rope_parameters": dict(model.backbone.config.rope_parameters)},
               "codec": codec_case(tiny, tensors),
               "mlx_vs_sglang": mlx_cross_check(tiny, cases, tensors)}
    meta = {"specials": specials, "tokenizer_len": vocab_tok, "text_vocab_size": vocab,
            "boc_id": ns.BOC_ID, "eoc_id": ns.EOC_ID, "audio_placeholder_id": ref.AUDIO_PLACEHOLDER_ID,
            "greedy_rule": "temperature 0 (argmax) through sampler.step", "eoc_bias": EOC_BIAS,
            "made_by": f"scripts/release_fixtures/v3/write.py (sglang-omni 0.1.9, transformers "
                       f"{__import__('transformers').__version__}, torch {torch.__version__})"}
    with open(os.path.join(OUT, "cases.json"), "w") as f:
        json.dump({"meta": meta, "cases": cases}, f, indent=1)
        f.write("\n")
    save_file({k: v.contiguous() for k, v in sorted(tensors.items())}, os.path.join(OUT, "cases.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(OUT, "figures.json"), "w") as f:
        json.dump(figures, f, indent=1)
        f.write("\n")
    ref.log(f"figures: {figures}")


def bundle_codec(state: dict, g: torch.Generator) -> dict:
    """A tiny transformers HiggsAudioV2TokenizerModel (config CODEC, written beside the weights as
    tiny/codec_config.json) under the bundle prefix, in its own state_dict names."""
    from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

    torch.manual_seed(ref.SEED)
    codec = HiggsAudioV2TokenizerModel(HiggsAudioV2TokenizerConfig(**CODEC)).eval()
    with torch.no_grad():   # codebooks spread out, so encode picks varied codes
        for q in codec.quantizer.quantizers:
            q.codebook.embed.copy_(torch.randn(q.codebook.embed.shape, generator=g))
            q.codebook.embed_avg.copy_(q.codebook.embed)
    with open(os.path.join(OUT, "tiny", "codec_config.json"), "w") as f:
        json.dump(CODEC, f, indent=2, sort_keys=True)
        f.write("\n")
    return {**state, **{CODEC_PREFIX + k: v for k, v in codec.state_dict().items()}}


def codec_case(tiny: str, tensors: dict) -> dict:
    """The reference's codec facade loads the bundle back; encode a 0.8 s waveform (the facade
    zero-pads clips under 1 s to 1 s) and decode the codes."""
    codec = ref.load_reference_codec(tiny, os.path.join(tiny, "codec_config.json"))
    t = torch.arange(int(0.8 * 24000)) / 24000
    wav = (0.3 * torch.sin(2 * torch.pi * 220 * t) + 0.1 * torch.sin(2 * torch.pi * 1330 * t)).half().float()
    with torch.no_grad():
        codes = codec.encode_reference(wav, sample_rate=24000)
        audio = codec.decode(codes)
    tensors["codec.wav"] = wav.half()                  # fp16-exact by construction
    tensors["codec.codes"] = codes
    tensors["codec.decoded"] = audio.float().half()    # stored fp16: compare at ~1e-3
    n = sum(1 for k in ref.checkpoint_names(tiny) if k.startswith(CODEC_PREFIX))
    return {"codec_tensors": n, "codes_shape": list(codes.shape), "decoded_samples": int(audio.shape[-1]),
            "decoded_abs_max": float(audio.abs().max())}


def mlx_cross_check(tiny: str, cases: dict, tensors: dict) -> dict:
    """mlx-audio's higgs_audio_v3 on the same checkpoint: its prompt ids, its teacher-forced audio
    logits, its own generate() loop's greedy frames, against sglang-omni's."""
    m = ref.mlx_model(tiny)
    out = {"rope_theta_null": m.rope_note}
    for name, c in cases.items():
        ref_delayed = tensors.get(f"{name}.ref_delayed")
        ids, logits = ref.mlx_teacher_forced(m.model, c["text"], c["ref_text"], ref_delayed, tensors[f"{name}.frames"])
        frames = ref.mlx_greedy(m.model, c["text"], c["ref_text"], ref_delayed, GREEDY_STEPS)
        sg = tensors[f"{name}.audio_logits"].numpy()
        out[name] = {"prompt_ids_equal": ids == c["prompt_ids"],
                     "audio_logits_max_abs_diff": float(np.abs(np.array(logits, dtype=np.float32) - sg).max()),
                     "audio_logits_max_abs": float(np.abs(sg).max()),
                     "greedy_frames_equal": bool(np.array_equal(frames, tensors[f"{name}.greedy_frames"].numpy())),
                     "greedy_steps": int(frames.shape[0])}
    return out


if __name__ == "__main__":
    main()
