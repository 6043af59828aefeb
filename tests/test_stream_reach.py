"""Streamed decoding sees as far as the codec's decoder does.

A code frame changes the decoded audio up to ~10 frames either side (the DAC decoder's kernels,
the same at every width, so the tiny codec measures the release's reach). The engine's left
context and held-back lookahead must cover that reach, or streamed audio differs from whole
decoding away from the crossfades (the 6-frame lookahead of the previous codec did)."""
from __future__ import annotations

import torch

from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig
from inference.engine import EngineConfig
from higgs_train.testing.tiny_exports import TINY_CODEC


def reach(codec, n=60, at=30, rel=1e-3) -> tuple[int, int]:
    """Frames left and right of frame `at` whose audio moves by > rel x the largest change."""
    codes = torch.randint(0, codec.codebook_size, (1, 8, n), generator=torch.Generator().manual_seed(0))
    other = codes.clone()
    other[0, :, at] = (other[0, :, at] + 1) % codec.codebook_size
    d = (codec.decode(codes) - codec.decode(other))[0, 0].abs().view(n, codec.hop).amax(1)
    moved = torch.nonzero(d > rel * d.max()).flatten()
    return at - int(moved.min()), int(moved.max()) - at


def test_engine_covers_the_decoder_reach():
    torch.manual_seed(0)
    left, right = reach(AudioTokenizer(TokenizerConfig(**TINY_CODEC)).eval())
    assert 5 <= left <= 12 and 5 <= right <= 12, (left, right)   # the measurement itself is sane
    cfg = EngineConfig()
    assert cfg.decode_context_frames >= left and cfg.lookahead_frames >= right, (left, right)
