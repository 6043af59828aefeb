"""Fixtures for the release LLM parity tests (tests/test_llm_release.py), made by the ORIGINAL code.

    /tmp/boson_venv/bin/python scripts/release_fixtures/llm.py        (venv: setup_venv.sh)

Writes tests/fixtures/release/llm_original/:
  model/            a tiny random HiggsAudioModel (the release's config shape: dual_ffn_fast_forward,
                    every layer dual, skip_audio_tower, delay pattern, encode_audio_in_tokens),
                    saved by its own save_pretrained, sharded (+ model.safetensors.index.json)
  partial/          the same shape with audio_adapter_type dual_ffn and dual layers [0, 2] only
                    (layer 1 is a plain LlamaDecoderLayer)
  from_native/      a tiny native DualFFNModel (seeded, partially dual) exported by OUR converter
                    (to=original); made by this script calling the project's venv (--native)
  io.safetensors    the inputs (placeholder form the original takes, and the expanded per-position
                    form ours takes) and the original's text / audio logits for model/ and partial/
  native_logits.safetensors   our logits for from_native/ on the same inputs (project venv)
  figures.json      max |original - ours| on from_native/: the original code loads our export

Inputs: a padded batch of two rows with audio-in (<|AUDIO|>, codes, encode_audio_in_tokens) and
audio-out (<|AUDIO_OUT|>) positions, stream BOS/EOS codes included; the original forward pass in
training mode right-pads the batch (round_to 8). Token ids are tiny (vocab 128) and stated in the
config, as a release config states its own.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import torch
from higgs_train.llm.checkpoints import save_llm

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
OUT = os.path.join(REPO, "tests", "fixtures", "release", "llm_original")
SEED = 1234

V, D, FF, L, H, KV, HD = 128, 32, 64, 3, 4, 2, 8
K, C = 4, 30                                     # 4 codebooks x 30 codes (+ stream BOS 30, EOS 31)
ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 16}    # positions > 16 exist: the scaling matters
TOK = {"audio_eos": 101, "audio_out_bos": 102, "audio_in": 104, "audio_out": 105, "pad": 0}
TEXT = (5, 99)                                   # text ids drawn from this range


def inputs() -> dict[str, torch.Tensor]:
    """The original's forward inputs: placeholders + codes [K, total] with per-audio starts."""
    g = torch.Generator().manual_seed(SEED)

    def text(n):
        return torch.randint(*TEXT, (n,), generator=g).tolist()

    i_in, i_out, bos = TOK["audio_in"], TOK["audio_out"], TOK["audio_out_bos"]
    rows = [text(4) + [i_in] + text(3) + [bos, i_out, TOK["audio_eos"]] + text(2) + [bos, i_out],
            text(3) + [bos, i_out] + text(2)]
    audio_in = [torch.randint(0, C, (K, 5), generator=g)]
    audio_out = [torch.randint(0, C + 2, (K, n), generator=g) for n in (9, 6, 7)]
    for a in audio_out:                          # a delayed stream: BOS first, EOS at the end
        a[:, 0] = C
        a[-1, -1] = C + 1
    T = max(map(len, rows))
    ids = torch.full((2, T), TOK["pad"], dtype=torch.long)
    att = torch.zeros(2, T, dtype=torch.long)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        att[b, :len(r)] = 1

    def cat(xs):
        starts = torch.tensor([0] + [x.shape[1] for x in xs[:-1]]).cumsum(0)
        return torch.cat(xs, 1), starts

    ai, ai_s = cat(audio_in)
    ao, ao_s = cat(audio_out)
    return {"input_ids": ids, "attention_mask": att, "audio_in_ids": ai, "audio_in_ids_start": ai_s,
            "audio_out_ids": ao, "audio_out_ids_start": ao_s}


def expand(out, inp) -> dict[str, torch.Tensor]:
    """Per-position form (ours): ids, codes [B, T, K], audio mask, valid mask, from the original's
    merged output (codes fill each audio mask in row-major order, as merge_input_ids_... does)."""
    ids = out.expanded_input_ids
    B, T = ids.shape
    codes = torch.zeros(B, T, K, dtype=torch.long)
    codes[out.audio_in_discrete_codes_mask] = inp["audio_in_ids"].T
    codes[out.audio_out_mask] = inp["audio_out_ids"].T
    return {"x_input_ids": ids, "x_audio_codes": codes,
            "x_audio_mask": out.audio_in_discrete_codes_mask | out.audio_out_mask,
            "x_audio_out_mask": out.audio_out_mask, "x_valid": out.attention_mask.bool()}


def original_config(m, adapter: str, dual: list[int]):
    text = dict(vocab_size=V, hidden_size=D, intermediate_size=FF, num_hidden_layers=L, num_attention_heads=H,
                num_key_value_heads=KV, head_dim=HD, rms_norm_eps=1e-5, rope_theta=500000.0, rope_scaling=ROPE,
                max_position_embeddings=4096, tie_word_embeddings=True, pad_token_id=None)
    return m.HiggsAudioConfig(
        text_config=text, audio_adapter_type=adapter, audio_dual_ffn_layers=dual, audio_ffn_hidden_size=D,
        audio_ffn_intermediate_size=FF, encode_whisper_embed=False, encode_audio_in_tokens=True,
        use_delay_pattern=True, skip_audio_tower=True, audio_num_codebooks=K, audio_codebook_size=C,
        audio_stream_bos_id=C, audio_stream_eos_id=C + 1, audio_in_token_idx=TOK["audio_in"],
        audio_out_token_idx=TOK["audio_out"], audio_out_bos_token_id=TOK["audio_out_bos"],
        audio_eos_token_id=TOK["audio_eos"], pad_token_id=TOK["pad"], torch_dtype="float32")


@torch.no_grad()
def run_original(model, inp):
    model.eval()
    return model(**inp, use_cache=False, return_dict=True)


def make_original(m, name: str, adapter: str, dual: list[int], seed: int, io: dict) -> None:
    torch.manual_seed(seed)
    model = m.HiggsAudioModel(original_config(m, adapter, dual))
    with torch.no_grad():   # norms away from 1, so a mis-mapped norm shows
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, max_shard_size="100KB", safe_serialization=True)
    reloaded = m.HiggsAudioModel.from_pretrained(d)      # what a user of the release loads
    inp = inputs()
    out = run_original(reloaded, inp)
    if not io:
        io.update(inp)
        io.update(expand(out, inp))
    io[f"{name}_text_logits"] = out.logits.float()
    io[f"{name}_audio_logits"] = out.audio_logits.float()   # [N audio-out positions, K, C + 2]


def native_side() -> None:
    """Project venv: a tiny native model -> our to=original export, and our logits on io's inputs."""
    sys.path.insert(0, REPO)
    from safetensors.torch import load_file, save_file

    from higgs_train.convert import convert
    from higgs_train.llm.config import DualFFNConfig
    from higgs_train.llm.model import DualFFNModel

    torch.set_num_threads(1)
    rope = {k: v for k, v in ROPE.items() if k != "rope_type"}
    cfg = DualFFNConfig.preset("full", vocab_size=V, hidden_size=D, intermediate_size=FF, num_layers=L, num_heads=H,
                        num_kv_heads=KV, head_dim=HD, rope_theta=500000.0, rope_scaling=rope, dual_layers=[1],
                        num_codebooks=K, codebook_size=C, encode_audio_in_tokens=True,
                        special_tokens={**TOK, "audio_bos": 100, "audio_delay": 103})
    torch.manual_seed(SEED + 7)
    model = DualFFNModel(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "norm" in n:
                p.add_(torch.randn_like(p) * 0.2)
    tmp = os.path.join(OUT, ".native.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    save_llm(model, tmp)
    dst = os.path.join(OUT, "from_native")
    shutil.rmtree(dst, ignore_errors=True)
    convert(tmp, dst, "original")
    shutil.rmtree(tmp)
    io = load_file(os.path.join(OUT, "io.safetensors"))
    with torch.no_grad():
        o = model(io["x_input_ids"], io["x_audio_codes"], io["x_audio_mask"])
    save_file({"text_logits": o.text_logits.contiguous(),
               "audio_logits": o.audio_logits[io["x_audio_out_mask"]].contiguous()},
              os.path.join(OUT, "native_logits.safetensors"))


def main() -> None:
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, HERE)
    from common import boson_llm_module, log   # noqa: E402  (helper B's shared module)

    torch.set_num_threads(1)
    m = boson_llm_module()
    os.makedirs(OUT, exist_ok=True)
    io: dict = {}
    make_original(m, "model", "dual_ffn_fast_forward", list(range(L)), SEED, io)
    make_original(m, "partial", "dual_ffn", [0, 2], SEED + 1, io)
    save_file({k: v.contiguous() for k, v in io.items()}, os.path.join(OUT, "io.safetensors"))
    log("original models and logits written")

    py = os.path.join(REPO, ".venv", "bin", "python")
    subprocess.run([py, os.path.abspath(__file__), "--native"], check=True, cwd=REPO,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    ours = load_file(os.path.join(OUT, "native_logits.safetensors"))
    theirs = run_original(m.HiggsAudioModel.from_pretrained(os.path.join(OUT, "from_native")),
                          {k: io[k] for k in inputs()})
    valid = io["x_valid"]
    fig = {"from_native_text_logits_max_abs_diff":
           (theirs.logits[valid] - ours["text_logits"][valid]).abs().max().item(),
           "from_native_audio_logits_max_abs_diff": (theirs.audio_logits - ours["audio_logits"]).abs().max().item(),
           "made_by": "scripts/release_fixtures/llm.py (boson-multimodal 0.1.1, transformers "
                      f"{__import__('transformers').__version__}, torch {torch.__version__})"}
    with open(os.path.join(OUT, "figures.json"), "w") as f:
        json.dump(fig, f, indent=2)
    log(f"figures: {fig}")


if __name__ == "__main__":
    native_side() if "--native" in sys.argv else main()
