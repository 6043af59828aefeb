"""A release-shaped random checkpoint through the converter path, then peak GPU memory at 8k context.

    python -m benchmarks.gpu_release                               # CUDA machine: full size, bf16
    python -m benchmarks.gpu_release size=tiny device=cpu context=256   # smoke test

1. writes random bf16 weights in the ORIGINAL release's layout (config.json model_type higgs_audio,
   shards of at most 4.6 GB + index, the release's names; full size = the release's 397 tensors),
2. converts it to our layout (python -m higgs_train.convert, in a fresh process: time, peak RSS),
3. loads the original directory directly onto the device (DualFFNModel.from_pretrained, bf16),
4. prefills `context` positions (half of them audio, 1024 per forward as the engine does) into a
   static KV cache of that many slots and decodes a few steps: peak GPU memory
   (torch.cuda.max_memory_allocated) for weights + cache + activations, and the decode step time.
Needs torch, safetensors, transformers (config classes only), omegaconf (the command line) and this
repository.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

import torch

REPO = Path(__file__).resolve().parent.parent

from higgs_train.cli import parse
from higgs_train.llm.checkpoints import load_llm, write_llm
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.layouts import export_plan, native_shapes
from higgs_train.llm.model import DualFFNModel

TINY = dict(vocab_size=2048, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            head_dim=16)
TOKENS = {"audio_eos": 128012, "audio_out_bos": 128013, "audio_in": 128015, "audio_out": 128016, "pad": 128001}


def write_release(d: Path, cfg: DualFFNConfig, device) -> float:
    """Random weights (drawn on `device`, fast) in the original layout; returns GB written."""
    shapes = native_shapes(cfg)
    meta = {n: torch.empty(s, dtype=torch.bfloat16, device="meta") for n, s in shapes.items()}
    g = torch.Generator(device=device).manual_seed(0)

    def draw(name: str) -> torch.Tensor:
        t = torch.empty(shapes[name], dtype=torch.bfloat16, device=device)
        return (t.normal_(0, 0.02, generator=g) if t.ndim > 1 else t.fill_(1.0)).cpu()

    tokens = {k: min(v, cfg.vocab_size - 1) for k, v in TOKENS.items()}
    plan = export_plan(cfg, "original")
    write_llm(d, replace(cfg, special_tokens=tokens), "original", plan, meta, draw, max_shard_bytes=int(4.6e9))
    return sum(2 * meta[s].numel() for _, s in plan) / 1e9


def convert_in_fresh_process(src: Path, dst: Path) -> tuple[float, float]:
    """(seconds, peak RSS GB) of `python -m higgs_train.convert src dst to=native`."""
    code = (f"from higgs_train.convert import convert; convert({str(src)!r}, {str(dst)!r}, 'native'); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])")
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    if r.returncode:
        raise SystemExit(f"conversion failed: {r.stderr.strip().splitlines()[-1:]}")
    return time.perf_counter() - t0, int(r.stdout.split()[-1]) * 1024 / 1e9


@torch.no_grad()
def prefill_and_decode(model: DualFFNModel, context: int, steps: int, device) -> dict:
    K, chunk = model.cfg.num_codebooks, 1024
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, model.cfg.vocab_size, (1, context + steps), generator=g).to(device)
    codes = torch.randint(0, model.cfg.codebook_size, (1, context + steps, K), generator=g).to(device)
    mask = torch.zeros(1, context + steps, dtype=torch.bool, device=device)
    mask[:, context // 2:] = True                      # half text, then audio (decode steps are audio)
    cache = model.allocate_cache(1, context + steps)
    t0 = time.perf_counter()
    for s in range(0, context, chunk):
        e = min(context, s + chunk)
        model(ids[:, s:e], codes[:, s:e], mask[:, s:e], cache=cache, positions=torch.arange(s, e, device=device),
              last_only=True)
    sync(device)
    prefill = time.perf_counter() - t0
    t0 = time.perf_counter()
    for t in range(context, context + steps):
        model(ids[:, t:t + 1], codes[:, t:t + 1], mask[:, t:t + 1], cache=cache,
              positions=torch.tensor([t], device=device))
    sync(device)
    return {"prefill_s": prefill, "decode_step_ms": (time.perf_counter() - t0) / steps * 1000,
            "kv_cache_gib": (cache.k.numel() + cache.v.numel()) * cache.k.element_size() / 2 ** 30}


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@dataclass
class Args:
    size: str = field(default="full", metadata={"help": "full (the release's shape) | tiny"})
    device: str = field(default="cuda" if torch.cuda.is_available() else "cpu", metadata={"help": "torch device"})
    context: int = field(default=8192, metadata={"help": "prompt positions prefilled, and the KV-cache slots"})
    steps: int = field(default=16, metadata={"help": "decode steps after the prefill"})
    dir: Optional[str] = field(default=None, metadata={"help": "where the random checkpoint goes (null: a temp dir)"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.gpu_release", __doc__)
    device = torch.device(args.device)
    cfg = DualFFNConfig.preset("full") if args.size == "full" else DualFFNConfig.preset("full", **TINY)
    cfg = replace(cfg, encode_audio_in_tokens=True)
    root = Path(args.dir or tempfile.mkdtemp(prefix="gpu_release_"))
    shutil.rmtree(root, ignore_errors=True)
    res = {}
    try:
        t0 = time.perf_counter()
        res["checkpoint_gb"] = write_release(root / "original", cfg, device)
        res["shards"] = len(list((root / "original").glob("*.safetensors")))
        res["write_s"] = time.perf_counter() - t0
        res["convert_to_native_s"], res["convert_peak_rss_gb"] = convert_in_fresh_process(root / "original",
                                                                                          root / "native")
        shutil.rmtree(root / "native")
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        model = load_llm(root / "original", dtype=dtype, device=device)[0].eval()
        sync(device)
        res["load_original_s"] = time.perf_counter() - t0
        if device.type == "cuda":
            res["weights_gib"] = torch.cuda.memory_allocated() / 2 ** 30
        res.update(prefill_and_decode(model, args.context, args.steps, device))
        if device.type == "cuda":
            res[f"peak_gib_at_{args.context}_context"] = torch.cuda.max_memory_allocated() / 2 ** 30
    finally:
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"release-shaped checkpoint ({args.size}) on {name}, context {args.context}\n")
    print("| measure | value |\n| --- | --- |")
    for k, v in res.items():
        print(f"| {k} | {v:.4g} |" if isinstance(v, float) else f"| {k} | {v} |")


if __name__ == "__main__":
    main(sys.argv[1:])
