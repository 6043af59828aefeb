"""Decode steps replayed from CUDA graphs: one graph per attention length of one KV cache.

Why: at batch 1-8 a decode step is hundreds of kernels (about 15 a layer), each too small to fill
a GPU, so launching them costs more than running them. A CUDA graph records the step once and
replays it with one launch. A step's shapes are fixed by (batch, cache bucket, attend), which is
why the engine rounds attention up to EngineConfig.attend_step slots: one graph per multiple.

    steps = DecodeSteps(model, cache, capture=cuda_capture())   # capture=None: eager, same buffers
    steps = DecodeSteps(model, cache, packs=PackedLinears.for_decode(model, batch))   # CPU: packed GEMMs
    logits = steps(frame[:, None], position, attend)             # [B, 1, K, A], valid until the next call

The contract a captured step relies on (held on CPU by tests/test_inference_speed_paths.py, with
stand-ins for `capture`):
- the step reads only the fixed buffers `codes` and `position` and the cache, so a replay sees the
  new inputs once they are copied in;
- running a step twice on the same inputs rewrites the same key/value slot with the same values,
  so warm-up runs and the check below change nothing;
- every new graph is replayed once against the eager step on the same inputs; a graph that fails
  to capture or differs turns graphs off for this cache (a warning says why) and decoding goes on
  eagerly, with the same outputs.
"""
from __future__ import annotations

import logging
from contextlib import nullcontext
from typing import Callable

import torch
from torch import Tensor

from higgs_train.llm.model import DualFFNModel, KVCache
from inference.packed_gemm import PackedLinears

log = logging.getLogger(__name__)

Step = Callable[[], Tensor]


def cuda_capture() -> Callable[[Step], Step]:
    """A capture function for DecodeSteps: records `step` into a CUDA graph; the graphs of one
    cache share a memory pool (they never run at the same time)."""
    pool = torch.cuda.graph_pool_handle()

    def capture(step: Step) -> Step:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):      # warm-up off the capturing stream, as torch.cuda.graph asks
            step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            out = step()

        def replay() -> Tensor:
            graph.replay()
            return out
        return replay
    return capture


class DecodeSteps:
    """Audio-only decode steps of `model` on `cache` from fixed input buffers, eager or replayed."""

    def __init__(self, model: DualFFNModel, cache: KVCache, capture: Callable[[Step], Step] | None = None,
                 packs: PackedLinears | None = None):
        B, dev = cache.k.shape[1], cache.k.device
        self.model, self.cache, self.capture, self.packs = model, cache, capture, packs
        self.ids = torch.zeros(B, 1, dtype=torch.long, device=dev)   # only its shape is read (audio_only)
        self.codes = torch.zeros(B, 1, model.cfg.num_codebooks, dtype=torch.long, device=dev)
        self.position = torch.zeros(1, dtype=torch.long, device=dev)
        self.graphs: dict[int, Step] = {}

    def reset(self) -> None:
        """Before a generation: an empty cache, and packs of the weights as they are now."""
        self.cache.reset()
        if self.packs is not None:
            self.packs.refresh()

    def __call__(self, codes: Tensor, position: int, attend: int) -> Tensor:
        """codes [B, 1, K] of the frame at slot `position`; attention reads slots 0..attend-1."""
        self.codes.copy_(codes)
        self.position.fill_(position)
        if self.capture is None:
            return self._eager(attend)
        replay = self.graphs.get(attend)
        return replay() if replay is not None else self._record(attend)

    def _eager(self, attend: int) -> Tensor:
        with self.packs.active() if self.packs is not None else nullcontext():
            return self.model(self.ids, self.codes, None, cache=self.cache, positions=self.position,
                              attend=attend, audio_only=True, text_head=False).audio_logits

    def _record(self, attend: int) -> Tensor:
        """This step's logits, from a new graph for `attend` if its first replay matches the eager step."""
        want = self._eager(attend).clone()
        try:
            replay = self.capture(lambda: self._eager(attend))
            got = replay()
        except Exception as e:   # noqa: BLE001 - any capture failure: decode eagerly instead
            return self._give_up(want, attend, f"capture failed: {type(e).__name__}: {e}")
        if not torch.allclose(got.float(), want.float(), rtol=1e-3, atol=1e-3):
            diff = (got.float() - want.float()).abs().max().item()
            return self._give_up(want, attend, f"the replayed step differs from the eager one (max |diff| {diff})")
        self.graphs[attend] = replay
        return got

    def _give_up(self, logits: Tensor, attend: int, why: str) -> Tensor:
        log.warning("CUDA graphs off for this KV cache (attend=%d): %s; decoding eagerly", attend, why)
        self.capture = None
        self.graphs.clear()
        return logits
