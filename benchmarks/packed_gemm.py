"""F.linear against the packed GEMMs of inference.packed_gemm at decode-step row counts, on the CPU:
MKL's in fp32, oneDNN's in bf16.

    python -m benchmarks.packed_gemm [threads=1] [rows=[1,2,3,4,5,6,8,12,16]]

Per weight shape (the benchmark model's: hidden 512, intermediate 1536) and row count: microseconds
per product, best of 5 rounds of 200 calls cycling through 30 distinct weights (so none stays in
cache, as in a decode step that reads every layer's weights once), and F.linear / packed. "padded"
is what PackedLinears runs: the rows padded to a multiple of 4 and multiplied by a pack made for
that many. Where the ratio is below 1 packing loses: that is why the engine packs fp32 only at
batches of 4+. The bf16 columns: F.linear on bf16 weights, and oneDNN's blocked weights made for
that many rows (torch.ops.mkldnn._linear_pointwise), which the engine uses at any batch.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import List

import torch
import torch.nn.functional as F

from higgs_train.cli import parse

SHAPES = [(1536, 512), (512, 1536), (512, 512)]   # gate/up, down, q/o: [out, in]


def per_call(fn, calls: int = 200, rounds: int = 5) -> float:
    for _ in range(10):
        fn()
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - t0) / calls)
    return best * 1e6


@dataclass
class Args:
    threads: int = field(default=1, metadata={"help": "torch threads"})
    rows: List[int] = field(default_factory=lambda: [1, 2, 3, 4, 5, 6, 8, 12, 16],
                            metadata={"help": "row counts (a decode step's batch)"})


def main(argv: list[str]) -> None:
    a = parse(Args, argv, "python -m benchmarks.packed_gemm", __doc__)
    torch.set_num_threads(a.threads)
    print(f"{a.threads} thread(s); us per product, best of 5 x 200 calls over 30 weights")
    print("| weight [out, in] | rows | fp32 F.linear us | packed us (ratio) | padded to 4k rows us (ratio) "
          "| bf16 F.linear us | oneDNN packed us (ratio) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n, k in SHAPES:
        weights = [torch.randn(n, k) * 0.02 for _ in range(30)]
        for rows in a.rows:
            x = torch.randn(rows, k)
            padded = -(-rows // 4) * 4
            xp = F.pad(x, (0, 0, 0, padded - rows))
            packs = [torch.ops.mkl._mkl_reorder_linear_weight(w, rows) for w in weights]
            packs_p = [torch.ops.mkl._mkl_reorder_linear_weight(w, padded) for w in weights]
            i = iter(range(10**9))
            plain = per_call(lambda: F.linear(x, weights[next(i) % 30]))
            packed = per_call(lambda: torch.ops.mkl._mkl_linear(x, packs[(j := next(i) % 30)], weights[j], None, rows))
            pad = per_call(lambda: torch.ops.mkl._mkl_linear(xp, packs_p[(j := next(i) % 30)], weights[j], None,
                                                             padded)[:rows])
            wb, xb = [w.bfloat16() for w in weights], x.bfloat16()
            packs_b = [torch.ops.mkldnn._reorder_linear_weight(w, rows) for w in wb]
            plain_b = per_call(lambda: F.linear(xb, wb[next(i) % 30]))
            onednn = per_call(lambda: torch.ops.mkldnn._linear_pointwise(xb, packs_b[next(i) % 30], None, "none", [], ""))
            print(f"| [{n}, {k}] | {rows} | {plain:.0f} | {packed:.0f} ({plain / packed:.2f}) | "
                  f"{pad:.0f} ({plain / pad:.2f}) | {plain_b:.0f} | {onednn:.0f} ({plain_b / onednn:.2f}) |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
