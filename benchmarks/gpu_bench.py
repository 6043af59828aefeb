"""GPU check at full size: LLM training throughput (a layer subset), inference speed and peak memory.

    python -m benchmarks.gpu_bench                       # on a CUDA machine (full size, bf16)
    python -m benchmarks.gpu_bench size=tiny device=cpu steps=2 frames=20   # smoke test

Random weights: speed and memory do not depend on what the weights know. Prints a
markdown table; benchmarks/gpu_check.sh runs it. Needs only torch, safetensors,
transformers and tokenizers (what the GPU image has), omegaconf (the command line, higgs_train/cli.py)
and this repository.
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

import yaml

from higgs_train.cli import parse
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import DualFFNModel
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "model"
PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}


def llm_config(size: str, **over) -> DualFFNConfig:
    d = yaml.safe_load((CONFIGS / "llm" / f"{size}.yaml").read_text())
    d["vocab_size"] = d["vocab_size"] or 2048  # tiny: null means "the text tokenizer's size"
    return replace(DualFFNConfig.from_dict(d), **over)


def tokenizer_config(size: str) -> TokenizerConfig:
    d = yaml.safe_load((CONFIGS / "tokenizer" / f"{size}.yaml").read_text())
    d["teacher"] = "none"  # inference never runs the semantic teacher
    return TokenizerConfig(**{k: v for k, v in d.items() if k in TokenizerConfig.__dataclass_fields__})


def random_model(cfg: DualFFNConfig, device, dtype) -> DualFFNModel:
    with torch.device(device):
        model = DualFFNModel(cfg)   # normal(0, 0.02) weights, made on the device
    return model.to(dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_train(size, layers, seq, steps, device, dtype) -> dict:
    """Full-width DualFFN with `layers` layers, half of the positions audio: tokens/s and MFU."""
    cfg = llm_config(size, num_layers=layers, dual_layers=None)
    model = random_model(cfg, device, torch.float32)  # fp32 master weights, bf16 autocast
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    K = cfg.num_codebooks
    ids = torch.randint(0, min(cfg.vocab_size, 1000), (1, seq), device=device)
    codes = torch.randint(0, cfg.codebook_size, (1, seq, K), device=device)
    amask = torch.zeros(1, seq, dtype=torch.bool, device=device)
    amask[:, seq // 2:] = True
    labels = codes.masked_fill(~amask[..., None], -100)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(steps + 2):
        sync(device)
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = model.loss(ids, codes, amask, labels)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        times.append(time.perf_counter() - t)
    step = sum(times[2:]) / steps  # first two steps warm up kernels and the allocator
    n_params = sum(p.numel() for p in model.parameters())
    # per token: one FFN set (text or audio) + attention + heads; 6 flops per parameter-token
    ffn = 3 * cfg.hidden_size * cfg.intermediate_size * layers
    embed = (cfg.vocab_size + K * (cfg.codebook_size + 2)) * cfg.hidden_size  # lookups, not matmuls
    active = n_params - ffn - embed
    flops = 6 * active * seq + 12 * layers * cfg.num_heads * cfg.head_dim * seq * seq / 2
    tps = seq / step
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    out = {"layers": layers, "seq": seq, "step_s": step, "tokens_per_s": tps,
           "tokens_per_s_28_layers_est": tps * layers / llm_config(size).num_layers,
           "mfu": flops / step / (peak * 1e12) if peak else float("nan")}
    if device.type == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del model, opt
    return out


def bench_infer(size, tok_size, frames, batch, device, dtype) -> dict:
    """The inference engine with random full-size weights: RTF, frames/s, peak memory."""
    from higgs_train.llm.text_tokenizer import load_text_tokenizer, train_bpe
    from inference.engine import Engine, Request
    from inference.sampling import SamplingConfig

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = random_model(llm_config(size), device, dtype)
    codec = AudioTokenizer(tokenizer_config(tok_size)).to(device).eval()
    with tempfile.TemporaryDirectory() as d:
        train_bpe(["the quick brown fox jumps over the lazy dog"] * 50, d, vocab_size=300)
        text_tok = load_text_tokenizer(d)
    engine = Engine(model, codec, text_tok, sampling=SamplingConfig(max_frames=frames, seed=0))
    text = "The quick brown fox jumps over the lazy dog, again and again, until the sun goes down."
    engine.generate([Request(text=text, sampling=SamplingConfig(max_frames=8, seed=0))])  # warm-up
    res = {}
    for b in sorted({1, batch}):
        sync(device)
        t = time.perf_counter()
        out = engine.generate([Request(text=text, sampling=SamplingConfig(max_frames=frames, seed=i))
                               for i in range(b)])
        sync(device)
        dt = time.perf_counter() - t
        audio_s = sum(len(r.audio) for r in out) / engine.sample_rate
        res[f"batch{b}_rtf"] = dt / audio_s
        res[f"batch{b}_frames_per_s"] = sum(r.codes.shape[1] for r in out) / dt
    if device.type == "cuda":
        res["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return res


@dataclass
class Args:
    size: str = field(default="full", metadata={"help": "tiny | full (configs/model/*/<size>.yaml)"})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "torch device"})
    train_layers: int = field(default=4, metadata={"help": "decoder layers trained (the rest extrapolated)"})
    seq: int = field(default=4096, metadata={"help": "training sequence length"})
    steps: int = field(default=10, metadata={"help": "training steps timed"})
    frames: int = field(default=250, metadata={"help": "frames generated per request (25 = 1 s)"})
    batch: int = field(default=8, metadata={"help": "requests decoded together"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.gpu_bench", __doc__)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}; size: {args.size}; torch {torch.__version__}\n")
    tr = bench_train(args.size, args.train_layers, args.seq, args.steps, device, dtype)
    inf = bench_infer(args.size, args.size, args.frames, args.batch, device, dtype)
    print("| measure | value |\n| --- | --- |")
    for k, v in {**{f"train_{k}": v for k, v in tr.items()}, **{f"infer_{k}": v for k, v in inf.items()}}.items():
        print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")


if __name__ == "__main__":
    main(sys.argv[1:])
