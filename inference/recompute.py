"""The reference decode: every step runs the plain forward over every position so far, with no KV
cache, no left padding and no fast path. Slow (quadratic), and what the cached decode of
inference/engine.py is checked against (tests/test_inference.py, tests/test_inference_speed_paths.py)
and timed against (benchmarks/inference_speed.py): Engine.decode_frames(rows, use_cache=False)."""
from __future__ import annotations

import torch
from torch import Tensor


class Recompute:
    """Decode steps by recomputation, from prompts of equal length (ids, codes, amask batched)."""

    def __init__(self, model, ids: Tensor, codes: Tensor, amask: Tensor, audio_token: int):
        self.model, self.ids, self.codes, self.amask, self.audio_token = model, ids, codes, amask, audio_token

    def first(self) -> Tensor:
        """The audio logits [B, 1, K, A] of the prompt's last position."""
        return self.model(self.ids, self.codes, self.amask, last_only=True).audio_logits

    def __call__(self, frame: Tensor) -> Tensor:
        """Append frame [B, K] as one audio position; the logits [B, 1, K, A] after it."""
        B, dev = frame.shape[0], self.ids.device
        self.ids = torch.cat([self.ids, torch.full((B, 1), self.audio_token, dtype=torch.long, device=dev)], 1)
        self.codes = torch.cat([self.codes, frame[:, None].to(dev)], 1)
        self.amask = torch.cat([self.amask, torch.ones(B, 1, dtype=torch.bool, device=dev)], 1)
        return self.first()
