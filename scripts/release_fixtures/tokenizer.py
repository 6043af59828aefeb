"""A tiny random Higgs Audio v2 tokenizer saved by the ORIGINAL code, and its outputs on real speech.

    /tmp/boson_venv/bin/python scripts/release_fixtures/tokenizer.py

Writes
  tests/fixtures/release/tokenizer_original/        config.json + model.pth, as the release holds them
  tests/fixtures/release/tokenizer_original_cases/  per case: input waveform, encode() codes,
                                                    decode() audio (.npy), cases.json, README.md
Deterministic (seeded; a rerun gives identical files). See README.md beside this script.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import torch

import common

OUT_MODEL = os.path.join(common.FIXTURES, "tokenizer_original")
OUT_CASES = os.path.join(common.FIXTURES, "tokenizer_original_cases")

# The release's config.json (bosonai/higgs-audio-v2-tokenizer) has exactly these keys; the widths
# it sets (D, codebook_dim) are tiny here, the rest are the release's values.
RELEASE_CONFIG = {
    "n_filters": 32,
    "D": 256,
    "codebook_dim": 64,
    "target_bandwidths": [0.5, 1, 1.5, 2, 4],
    "ratios": [8, 5, 4, 2, 3],
    "sample_rate": 24000,
    "bins": 1024,
    "n_q": 8,
    "semantic_techer": "hubert_base_general",
}
TINY_CONFIG = {**RELEASE_CONFIG, "D": 32, "codebook_dim": 8}

SENTENCES = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Please call Stella and ask her to bring these things with her from the store.",
    "A gentle breeze moved through the tall grass as the sun went down.",
    "Seven silver spoons were found beneath the old wooden table yesterday.",
]
# Codebook training speech: voices and sentences the cases below do not use alone.
TRAIN_VOICES = ["en-us", "en-gb+f3", "en-gb-scotland", "en-us+m3", "fr+f2", "de+m2"]

# (name, voice, sentence index, speed, pitch, input rate, seconds). Lengths chosen so that both
# framing branches of the original _xcodec_encode run (cases.json says which ran per case), and two
# inputs are not at 24 kHz so its librosa resampling runs.
CASES = [
    ("en_us_0p70s_24k", "en-us", 0, 160, 45, 24000, 0.70),
    ("en_gb_f3_1p30s_24k", "en-gb+f3", 1, 150, 70, 24000, 1.30),
    ("scot_1p95s_24k", "en-gb-scotland", 2, 140, 35, 24000, 1.95),
    ("en_us_m3_1p00s_16k", "en-us+m3", 3, 170, 55, 16000, 1.00),
    ("fr_f2_0p77s_44k", "fr+f2", 2, 150, 60, 44100, 0.77),
]
TRAIN_STEPS = 6  # train-mode forwards: k-means init on the first, EMA + dead-code restarts after


def speech(voice, sentence, speed, pitch, sr, seconds, offset=0.0):
    """espeak-ng speech resampled to sr, cut to exactly round(seconds * sr) samples."""
    wav, native = common.espeak(SENTENCES[sentence], voice, speed, pitch)
    wav = common.resample(wav, native, sr)
    start = int(round(offset * sr))
    n = int(round(seconds * sr))
    wav = wav[start : start + n]
    assert len(wav) == n, f"{voice}: speech shorter than {seconds + offset} s"
    return np.ascontiguousarray(wav, dtype=np.float32)


def build(hat):
    common.seed_everything()
    return hat.HiggsAudioTokenizer(**TINY_CONFIG, device="cpu")


def train_codebooks(tok):
    """The original training path: forward() in train mode on batches of real speech, so the
    quantizer's k-means init, EMA updates and dead-code restarts fill the codebooks."""
    tok.train()
    batches = []
    for step in range(TRAIN_STEPS):
        clips = [
            speech(v, (step + i) % len(SENTENCES), 140 + 10 * i, 40 + 5 * i, 24000, 1.6, offset=0.05 * step)
            for i, v in enumerate(TRAIN_VOICES)
        ]
        batches.append(torch.from_numpy(np.stack(clips))[:, None, :])
    with torch.no_grad():
        for x in batches:
            tok(x, bw=None)
    tok.eval()
    layer0 = tok.quantizer.vq.layers[0]._codebook
    assert bool(layer0.inited), "k-means init did not run"
    return {"train_steps": TRAIN_STEPS, "batch": list(batches[0].shape)}


def encode_case(tok, wav, sr):
    """The original encode() (and decode() of its codes), with hooks recording which framing branch
    _xcodec_encode took: a second acoustic encoder call means the pad-320-and-re-encode branch."""
    seen = {"acoustic": [], "semantic": []}
    hooks = [
        tok.encoder.register_forward_hook(lambda m, i, o: seen["acoustic"].append((i[0].shape[-1], o.shape[-1]))),
        tok.encoder_semantic.register_forward_hook(lambda m, i, o: seen["semantic"].append(o.shape[-1])),
    ]
    try:
        codes = tok.encode(wav, sr=sr)  # (n_q, T) long
    finally:
        for h in hooks:
            h.remove()
    decoded = tok.decode(codes[None])  # (1, 1, samples) float32 numpy
    (sem_frames,) = seen["semantic"]
    first_in, first_frames = seen["acoustic"][0]
    padded = len(seen["acoustic"]) == 2
    acoustic_frames = seen["acoustic"][-1][1]
    trimmed = None
    if acoustic_frames != sem_frames:
        trimmed = "acoustic" if acoustic_frames > sem_frames else "semantic"
    info = {
        "samples_24k": first_in,
        "acoustic_frames_unpadded": first_frames,
        "semantic_frames": sem_frames,
        "pad_branch": padded,
        "acoustic_frames_padded": acoustic_frames if padded else None,
        "trimmed": trimmed,
        "code_frames": int(codes.shape[-1]),
    }
    return codes.numpy().astype(np.int64), decoded.astype(np.float32), info


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def main():
    torch.set_num_threads(1)
    hat = common.boson_tokenizer_module(common.TinyWidths())
    tok = build(hat)
    train = train_codebooks(tok)

    shutil.rmtree(OUT_MODEL, ignore_errors=True)
    os.makedirs(OUT_MODEL)
    os.makedirs(OUT_CASES, exist_ok=True)
    for old in os.listdir(OUT_CASES):  # README.md stays (written by hand)
        if old.endswith(".npy") or old == "cases.json":
            os.remove(os.path.join(OUT_CASES, old))
    with open(os.path.join(OUT_MODEL, "config.json"), "w") as f:
        json.dump(TINY_CONFIG, f, indent=2)
        f.write("\n")
    state = tok.state_dict()
    torch.save(state, os.path.join(OUT_MODEL, "model.pth"))

    cases = []
    for name, voice, sent, speed, pitch, sr, seconds in CASES:
        wav = speech(voice, sent, speed, pitch, sr, seconds)
        codes, decoded, info = encode_case(tok, wav, sr)
        files = {k: f"{name}.{k}.npy" for k in ("input", "codes", "decoded")}
        for key, arr in (("input", wav), ("codes", codes), ("decoded", decoded)):
            np.save(os.path.join(OUT_CASES, files[key]), arr)
        cases.append({
            "name": name, "voice": voice, "text": SENTENCES[sent], "espeak_speed": speed,
            "espeak_pitch": pitch, "sample_rate": sr, "num_samples": len(wav),
            "resampled_by_librosa": sr != TINY_CONFIG["sample_rate"], **info,
            "codes_shape": list(codes.shape), "decoded_shape": list(decoded.shape), "files": files,
        })
        common.log(f"{name}: {info}")

    # The saved directory is what the original loader reads: it reproduces codes and audio.
    loaded = hat.load_higgs_audio_tokenizer(OUT_MODEL, device="cpu")
    fresh = hat.HiggsAudioTokenizer(**TINY_CONFIG, device="cpu")
    incompatible = fresh.load_state_dict(torch.load(os.path.join(OUT_MODEL, "model.pth")), strict=False)
    assert not incompatible.missing_keys and not incompatible.unexpected_keys, incompatible
    for case in cases:
        wav = np.load(os.path.join(OUT_CASES, case["files"]["input"]))
        codes = loaded.encode(wav, sr=case["sample_rate"]).numpy()
        assert np.array_equal(codes, np.load(os.path.join(OUT_CASES, case["files"]["codes"]))), case["name"]
        audio = loaded.decode(torch.from_numpy(codes)[None])
        assert np.array_equal(audio, np.load(os.path.join(OUT_CASES, case["files"]["decoded"]))), case["name"]
    common.log("load_higgs_audio_tokenizer(dir) reproduces every case's codes and audio exactly")

    import librosa
    import transformers

    distinct = [int(np.unique(np.concatenate([np.load(os.path.join(OUT_CASES, c["files"]["codes"]))[q]
                                              for c in cases])).size) for q in range(TINY_CONFIG["n_q"])]
    index = {
        "source": "boson-multimodal==0.1.1 HiggsAudioTokenizer (original code), "
                  "scripts/release_fixtures/tokenizer.py",
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "librosa": librosa.__version__, "numpy": np.__version__},
        "model_dir": "../tokenizer_original",
        "model_sha256": sha(os.path.join(OUT_MODEL, "model.pth")),
        "tiny_widths": {
            **{k: v for k, v in vars(common.TinyWidths()).items()},
            "D": TINY_CONFIG["D"], "codebook_dim": TINY_CONFIG["codebook_dim"],
            "quantizer_dim": int(tok.quantizer_dim),
            "semantic_downsample_factor": int(tok.semantic_downsample_factor),
        },
        "hubert_config": {k: v for k, v in common.hubert_config(common.TinyWidths()).to_dict().items()
                          if k in ("hidden_size", "num_hidden_layers", "num_attention_heads",
                                   "intermediate_size", "conv_dim", "conv_kernel", "conv_stride",
                                   "conv_bias", "feat_extract_norm", "num_conv_pos_embeddings",
                                   "num_conv_pos_embedding_groups", "do_stable_layer_norm",
                                   "feat_proj_layer_norm", "layer_norm_eps", "hidden_act")},
        "codebook_training": train,
        "distinct_codes_per_codebook_over_cases": distinct,
        "encode_call": "tok.encode(input, sr=sample_rate) -> codes (n_q, T) int64",
        "decode_call": "tok.decode(codes[None]) -> numpy float32 (1, 1, samples)",
        "cases": cases,
    }
    with open(os.path.join(OUT_CASES, "cases.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    common.log(f"wrote {OUT_MODEL} and {OUT_CASES}; distinct codes per codebook {distinct}")


if __name__ == "__main__":
    main()
