"""LLM conversion memory and time on a release-width random checkpoint on disk.

    python -m benchmarks.convert [layers=14] [dir=/tmp/convert_bench] [keep=false]

Writes a random bf16 checkpoint in the original release's layout (hidden 3072, FFN 8192, 24/8
heads, vocab 128256, 8 x 1026 audio rows, every layer dual, shards of at most 4.6 GB as the
release's), then times each conversion original -> native -> hf -> original in a fresh process
and reads its peak RSS (VmHWM of /proc/self/status at its end: anonymous and file-backed pages;
not ru_maxrss, which a child inherits from its parent across fork + exec).
The release has 28 layers in 3 shards of at most 4.6 GB; `layers=28` is the real size.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

from higgs_train.cli import parse
from higgs_train.llm.checkpoints import Checkpoint, write_llm
from higgs_train.llm.layouts import export_plan, native_shapes
from higgs_train.llm.config import DualFFNConfig

GB = 1e9
RELEASE_SHARD = int(4.6 * GB)     # the release's largest shard is about this size


def write_random_release(d: Path, layers: int) -> DualFFNConfig:
    cfg = replace(DualFFNConfig.preset("full"), num_layers=layers, encode_audio_in_tokens=True)
    shapes = native_shapes(cfg)
    meta = {n: torch.empty(s, dtype=torch.bfloat16, device="meta") for n, s in shapes.items()}
    g = torch.Generator().manual_seed(0)

    def draw(name: str) -> torch.Tensor:
        t = torch.empty(shapes[name], dtype=torch.bfloat16)
        return t.normal_(0, 0.02, generator=g) if t.ndim > 1 else t.fill_(1.0)

    # the release's special-token ids (vocab 128256: layouts.RELEASE_TOKENS)
    write_llm(d, cfg, "original", export_plan(cfg, "original"), meta, draw, max_shard_bytes=RELEASE_SHARD)
    return cfg


PEAK = "; print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1])"


def peak_of(code: str) -> float:
    """Run python code in a fresh process; its peak RSS in GB."""
    r = subprocess.run([sys.executable, "-c", code + PEAK], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    if r.returncode != 0:
        raise SystemExit(f"failed: {r.stderr.strip().splitlines()[-1:]}")
    return round(int(r.stdout.split()[-1]) * 1024 / GB, 2)


def timed(src: Path, dst: Path, to: str) -> dict:
    t0 = time.perf_counter()
    peak = peak_of(f"from higgs_train.convert import convert; convert({str(src)!r}, {str(dst)!r}, {to!r})")
    wall = time.perf_counter() - t0
    files = sorted(dst.glob("*.safetensors"))
    return {"to": to, "seconds": round(wall, 1), "peak_rss_gb": peak,
            "written_gb": round(sum(f.stat().st_size for f in files) / GB, 2), "shards": len(files),
            "largest_out_shard_gb": round(max(f.stat().st_size for f in files) / GB, 2)}


def baseline_rss() -> float:
    """Peak RSS of a converter process doing nothing (python + torch + transformers' config)."""
    return peak_of("import higgs_train.llm.checkpoints; from transformers import HiggsAudioV2Config")


@dataclass
class Args:
    layers: int = field(default=14, metadata={"help": "decoder layers (28: the release's size)"})
    dir: str = field(default="/tmp/convert_bench", metadata={"help": "work folder (emptied first)"})
    keep: bool = field(default=False, metadata={"help": "keep the checkpoints"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.convert", __doc__)
    layers = args.layers
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    t0 = time.perf_counter()
    write_random_release(root / "original", layers)
    shards = sorted((root / "original").glob("*.safetensors"))
    largest = max(f.stat().st_size for f in shards) / GB
    print(f"random release-width checkpoint: {layers} layers, {len(shards)} shards, "
          f"{sum(f.stat().st_size for f in shards) / GB:.2f} GB, largest shard {largest:.2f} GB "
          f"(written in {time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"idle converter process: peak RSS {baseline_rss():.2f} GB", flush=True)
    print("| conversion | time (s) | peak RSS (GB) | written (GB) | shards | largest shard (GB) |")
    print("| --- | --- | --- | --- | --- | --- |")
    steps = [("original", "native"), ("native", "hf"), ("hf", "original2")]
    for src, dst in steps:
        to = dst.rstrip("2")
        r = timed(root / src, root / dst, to)
        print(f"| {src.rstrip('2')} -> {to} | {r['seconds']} | {r['peak_rss_gb']} | {r['written_gb']} | "
              f"{r['shards']} | {r['largest_out_shard_gb']} |", flush=True)
        if src != "original":
            shutil.rmtree(root / src)
    a, b = Checkpoint(root / "original"), Checkpoint(root / "original2")
    assert a.where.keys() == b.where.keys(), "round trip changed the names"
    for name in ("embed_tokens.weight", f"layers.{layers - 1}.audio_mlp.down_proj.weight"):
        assert torch.equal(a.get(name), b.get(name)), f"round trip changed {name}"
    print(f"largest input shard {largest:.2f} GB: the limit is largest shard + 1 GB = {largest + 1:.2f} GB")
    if not args.keep:
        shutil.rmtree(root)


if __name__ == "__main__":
    main(sys.argv[1:])
