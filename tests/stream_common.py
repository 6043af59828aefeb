"""Shared by the engine tests of each model family: a streamed request's audio against the same
request generated whole."""
from __future__ import annotations

import numpy as np


def assert_streamed_equals_whole(chunks: list[np.ndarray], whole: np.ndarray, hop: int, crossfade_frames: int) -> None:
    """Same length; identical away from the chunk seams, within 5 % of the peak across a seam's crossfade."""
    streamed = np.concatenate(chunks)
    assert len(streamed) == len(whole)
    seams = np.cumsum([len(x) for x in chunks])[:-1]
    near = np.zeros(len(streamed), bool)
    for s0 in seams:
        near[s0:s0 + crossfade_frames * hop] = True
    diff = np.abs(streamed - whole)
    assert diff[~near].max() < 1e-4, diff[~near].max()           # away from seams: identical
    assert diff[near].max() < 0.05 * np.abs(whole).max() + 1e-4
