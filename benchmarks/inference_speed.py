"""Inference speed on CPU with tiny random exports (or real ones: model=DIR tokenizer=DIR).

    python -m benchmarks.inference_speed [model=DIR tokenizer=DIR] [frames=100] [batch=8] [threads=1]

Rows: real-time factor (compute seconds per audio second, generation + decoding), the KV cache's
speed-up over recomputing the whole sequence every step, batched vs sequential throughput
(frames/s of `batch` requests decoded together vs one after another), and time to the first
streamed audio chunk.
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from higgs_train.cli import parse
from higgs_train.testing.tiny_exports import make_tiny_exports
from inference.engine import Engine, EngineConfig, Request
from inference.sampling import SamplingConfig


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


@dataclass
class Args:
    model: Optional[str] = field(default=None, metadata={"help": "LLM export (null: tiny random exports)"})
    tokenizer: Optional[str] = field(default=None, metadata={"help": "its audio tokenizer export"})
    frames: int = field(default=100, metadata={"help": "frames per request"})
    batch: int = field(default=8, metadata={"help": "requests decoded together"})
    threads: int = field(default=1, metadata={"help": "torch threads"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.inference_speed", __doc__)
    frames, batch = args.frames, args.batch
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    llm, tok = (args.model, args.tokenizer) if args.model else make_tiny_exports(tmp.name)
    # fixed length (temperature > 0 on random weights rarely draws EOS; max_frames bounds it)
    s = SamplingConfig(temperature=0.8, max_frames=frames, seed=0)
    engine = Engine.from_pretrained(llm, tok, "cpu", cfg=EngineConfig(buckets=(256, 1024, 4096)), sampling=s)
    req = Request("The quick brown fox jumps over the lazy dog.")
    engine.generate([Request("warm up", sampling=s.replace(max_frames=5))])

    [res], t = timed(lambda: engine.generate([req]))
    audio_s = len(res.audio) / res.sample_rate
    rows = [("real-time factor (batch 1, incl. decode)", f"{t / audio_s:.3f}",
             f"{audio_s:.1f} s audio in {t:.2f} s")]

    row = lambda: [engine.row(req, engine.plan(req))]   # noqa: E731
    _, t_cache = timed(lambda: engine.generate_codes(row()))
    _, t_full = timed(lambda: engine.generate_codes(row(), use_cache=False))
    rows.append(("KV cache speed-up vs recomputation", f"{t_full / t_cache:.1f}x",
                 f"{t_cache:.2f} s vs {t_full:.2f} s for {frames} frames"))

    reqs = [Request(f"Sentence number {i} is spoken now.", sampling=s.replace(seed=i)) for i in range(batch)]
    _, t_seq = timed(lambda: [engine.generate([r]) for r in reqs])
    out, t_bat = timed(lambda: engine.generate(reqs))
    n = sum(r.codes.shape[1] for r in out)
    rows.append((f"batched ({batch}) vs sequential throughput", f"{t_seq / t_bat:.1f}x",
                 f"{n / t_bat:.0f} vs {n / t_seq:.0f} frames/s"))

    t0 = time.perf_counter()
    it = engine.stream(req)
    first = next(it)
    ttfc = time.perf_counter() - t0
    rest = sum(len(c) for c in it)
    rows.append(("time to first streamed chunk", f"{ttfc * 1000:.0f} ms",
                 f"{len(first) / 24000 * 1000:.0f} ms of audio; whole {(len(first) + rest) / 24000:.1f} s"))

    print(f"{'measure':<44} {'value':>8}  detail")
    for name, v, d in rows:
        print(f"{name:<44} {v:>8}  {d}")


if __name__ == "__main__":
    main(sys.argv[1:])
