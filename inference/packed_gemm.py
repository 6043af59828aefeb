"""Decode-step matrix multiplies from weights packed once for the step's batch (CPU, fp32 or bf16).

Why: a decode step multiplies B rows by every weight it reads (attention and the audio FFN of each
layer, the audio head), and at a few rows the GEMM libraries spend much of each call repacking the
weight into their blocked layout. Packed once, as inductor does for the linears of a frozen CPU
graph, the same products run faster (`benchmarks/packed_gemm.py`, one thread):
- fp32: MKL's cblas_sgemm_pack (torch.ops.mkl._mkl_reorder_linear_weight / _mkl_linear), 1.1-2x
  at 4, 8, 12 or 16 rows but up to 2x slower at 3, 5 or 6 and no faster at 1-2; so a batch of 4 or
  more is padded to a multiple of 4 rows, and smaller batches keep F.linear. Another summation
  order (|diff| ~1e-6 of F.linear's); the fp32 frames stay those of
  tests/test_inference_speed_paths.py.
- bf16: oneDNN's blocked weights (torch.ops.mkldnn._reorder_linear_weight / _linear_pointwise),
  0.9-1.3x per product alone (about even at 1 row, 1.1-1.3x at 2+), ~1.5x over a whole decode
  step's linears in the profile; equal to F.linear's products (which run oneDNN too) on this CPU.

    packs = PackedLinears.for_decode(model, batch)   # None where it does not apply
    packs.refresh()                                   # per generation: repack weights changed since
    with packs.active():                              # the model's decode linears use the packs
        model(..., audio_only=True)

Cost: one packed copy of every weight a decode step reads (about their size) per batch size in
use; not made (F.linear as before) when it would take more than a quarter of the free memory.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from functools import partial
from typing import Iterator

import psutil
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from higgs_train.families import family_for_model

log = logging.getLogger(__name__)

MIN_ROWS = 4     # fp32: below this packing is no faster; rows are padded to a multiple of it


def kernel_available(dtype: torch.dtype) -> bool:
    """Whether this torch build and CPU have the packed kernel for `dtype` (fp32: MKL, bf16: oneDNN)."""
    if dtype == torch.float32:
        return torch.backends.mkl.is_available() and hasattr(torch.ops.mkl, "_mkl_linear")
    if dtype == torch.bfloat16:
        return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return False


class PackedLinears:
    """Packed weights of `linears` (all of `dtype`) for `rows` input rows (fp32: a multiple of
    MIN_ROWS, fewer rows are padded to it; bf16: any count is exact)."""

    def __init__(self, linears: list[nn.Linear], rows: int, dtype: torch.dtype):
        self.linears, self.rows, self.dtype = linears, rows, dtype
        self._pack()

    @classmethod
    def for_decode(cls, model, batch: int) -> "PackedLinears | None":
        """Packs for a decode step of `batch` rows, or None: not a CPU fp32/bf16 model without
        biases, fp32 with fewer than MIN_ROWS rows, no kernel in this torch build, or the copy would
        take more than a quarter of the free memory."""
        linears = family_for_model(model).decode_linears(model)   # in the order a step runs them
        dtype = linears[0].weight.dtype
        if not kernel_available(dtype) or not cls._packable(linears, dtype):
            return None
        if dtype == torch.float32:
            if batch < MIN_ROWS:
                return None
            batch = -(-batch // MIN_ROWS) * MIN_ROWS
        size = sum(m.weight.numel() * m.weight.element_size() for m in linears)
        free = psutil.virtual_memory().available
        if size > free / 4:
            log.info("decode weights not packed: %.1f GB would exceed a quarter of the %.1f GB free",
                     size / 1e9, free / 1e9)
            return None
        return cls(linears, batch, dtype)

    @staticmethod
    def _packable(linears: list[nn.Linear], dtype: torch.dtype) -> bool:
        return all(m.weight.dtype == dtype and m.weight.device.type == "cpu" and m.bias is None for m in linears)

    def _signature(self) -> list[tuple[int, int]]:
        return [(m.weight.data_ptr(), m.weight._version) for m in self.linears]

    def _pack(self) -> None:
        reorder, linear = ((torch.ops.mkl._mkl_reorder_linear_weight, self._mkl_linear)
                           if self.dtype == torch.float32 else
                           (torch.ops.mkldnn._reorder_linear_weight, self._onednn_linear))
        with torch.no_grad():
            packed = [reorder(m.weight.detach(), self.rows) for m in self.linears]
        # each linear's packed forward, installed by active(); straight into the module's __dict__
        # (nn.Module.__setattr__ costs ~10 us a call, 57 calls a step)
        self._forwards = [(vars(m), partial(linear, packed=p, weight=m.weight))
                          for m, p in zip(self.linears, packed)]
        self.signature = self._signature()

    def refresh(self) -> None:
        """Pack every weight again if any changed since packing (an engine calls this once per
        generation, not per step); weights no longer CPU in the packed dtype leave the linears on
        F.linear."""
        if self._signature() != self.signature:
            self._forwards = []
            if self._packable(self.linears, self.dtype):
                self._pack()

    @contextmanager
    def active(self) -> Iterator[None]:
        """Within: each linear multiplies by its pack."""
        for attrs, fn in self._forwards:
            attrs["forward"] = fn
        try:
            yield
        finally:
            for attrs, _ in self._forwards:
                del attrs["forward"]       # back to nn.Linear.forward

    def _mkl_linear(self, x: Tensor, packed: Tensor, weight: Tensor) -> Tensor:
        n = x.numel() // x.shape[-1]
        if n == self.rows:                        # a decode step of a batch that is a multiple of 4
            return torch.ops.mkl._mkl_linear(x, packed, weight, None, n)
        if n > self.rows:
            return F.linear(x, weight)
        flat = F.pad(x.reshape(n, x.shape[-1]), (0, 0, 0, self.rows - n))   # padding rows: what makes it fast
        return torch.ops.mkl._mkl_linear(flat, packed, weight, None, self.rows)[:n].view(*x.shape[:-1], -1)

    def _onednn_linear(self, x: Tensor, packed: Tensor, weight: Tensor) -> Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
