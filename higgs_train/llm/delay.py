"""MusicGen-style delay pattern over the K codebooks of an audio stream.

Codebook k is shifted right by k frames, so T frames take T + K - 1 positions: the first k
positions of codebook k hold stream BOS, the last K - 1 - k hold stream EOS. Frame t of the
coarse codebook is thus predicted before the finer codebooks of the same frame.

    codes [.., K, T]  --apply_delay-->  [.., K, T + K - 1]  --revert_delay-->  codes [.., K, T]

Supervision follows the same rule (stream_labels): the label of an audio stream is the stream
shifted by one frame, with IGNORE where nothing is to be predicted.
"""
from __future__ import annotations

import torch
from torch import Tensor

IGNORE = -100   # a label nothing is trained to predict (torch's cross-entropy ignore_index)


def apply_delay(codes: Tensor, bos: int, eos: int) -> Tensor:
    K, T = codes.shape[-2:]
    out = codes.new_full((*codes.shape[:-2], K, T + K - 1), eos)
    for k in range(K):
        out[..., k, :k] = bos
        out[..., k, k:k + T] = codes[..., k, :]
    return out


def revert_delay(delayed: Tensor) -> Tensor:
    K, L = delayed.shape[-2:]
    T = L - K + 1
    if T < 0:
        raise ValueError(f"{L} positions cannot hold a delayed stream of {K} codebooks")
    return torch.stack([delayed[..., k, k:k + T] for k in range(K)], dim=-2)


def audio_stream(codes: Tensor, bos: int, eos: int) -> Tensor:
    """What an assistant audio turn holds: [BOS frame, codes, EOS frame], delayed.

    codes [K, T] -> [K, T + 2 + K - 1]. Position 0 is all BOS (fed at generation start, never
    predicted); the last position is all EOS (the stream has ended in every codebook)."""
    K = codes.shape[0]
    framed = torch.cat([codes.new_full((K, 1), bos), codes, codes.new_full((K, 1), eos)], dim=1)
    return apply_delay(framed, bos, eos)


def strip_stream(delayed: Tensor, bos: int, eos: int) -> Tensor:
    """Inverse of audio_stream for a finished stream: revert the delay, drop the BOS/EOS frames."""
    codes = revert_delay(delayed)
    return codes[:, 1:-1] if codes.shape[1] >= 2 else codes[:, :0]


def stream_labels(codes: Tensor, eos: int) -> Tensor:
    """The labels of audio_stream(codes) at the positions it occupies, unshifted: [IGNORE, codes,
    EOS] delayed with IGNORE padding. The all-BOS frame and the delay's BOS padding are never
    targets, each codebook's EOS is a target once, the trailing delay padding (forced at
    generation) is not. codes [K, T] -> [K, T + 2 + K - 1]."""
    K = codes.shape[0]
    framed = torch.cat([codes.new_full((K, 1), IGNORE), codes, codes.new_full((K, 1), eos)], dim=1)
    return apply_delay(framed, IGNORE, IGNORE)
