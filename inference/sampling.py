"""Sampling one delayed audio frame: temperature, top-k, top-p, repetition-aware resampling.

    logits [K, A] (A = 1024 codes + stream BOS + stream EOS) -> codes [K]

Repetition-aware sampling (docs/model.md, "Generation defaults"): per codebook, a code already
seen `ras_max_repeats` times in the last `ras_window` frames is redrawn from the untempered,
unfiltered distribution; this breaks the loops low temperatures fall into without raising the
temperature everywhere.
Each request owns a torch.Generator, so a seed gives the same audio alone or in a batch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor


@dataclass
class SamplingConfig:
    temperature: float = 0.7    # 0 = greedy (argmax, no resampling): deterministic, for tests
    top_k: int = 50             # 0 = off
    top_p: float = 0.95         # 1 = off
    ras_window: int = 7         # frames looked back per codebook; 0 = off
    ras_max_repeats: int = 2    # a code seen this often in the window is redrawn
    max_frames: int = 1500      # audio frames per chunk of text (25 frames/s: 60 s)
    seed: int | None = None     # None = a fresh random seed per request

    def __post_init__(self):
        if self.temperature < 0 or self.top_k < 0 or not 0 < self.top_p <= 1 or self.max_frames < 1:
            raise ValueError(f"bad sampling config {self}")

    def replace(self, **overrides) -> "SamplingConfig":
        names = {f.name for f in fields(self)}
        unknown = set(overrides) - names
        if unknown:
            raise ValueError(f"unknown sampling options {sorted(unknown)}")
        return SamplingConfig(**{**asdict(self), **{k: v for k, v in overrides.items() if v is not None}})


def filter_logits(logits: Tensor, top_k: int, top_p: float) -> Tensor:
    """[K, A] -> [K, A] with everything outside top-k / the top-p nucleus set to -inf."""
    if top_k and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, idx = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > top_p     # keep the token that crosses top_p
        logits = logits.masked_fill(drop.scatter(-1, idx, drop), float("-inf"))
    return logits


def sample_frame(logits: Tensor, cfg: SamplingConfig, history: Tensor, gen: torch.Generator | None,
                 allowed: Tensor) -> Tensor:
    """One request's next delayed frame.

    logits [K, A] float; history [K, H] earlier real codes of this stream (H may be 0);
    allowed [K, A] bool, what the delay pattern permits (False rows are never drawn);
    returns codes [K] long.
    """
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if cfg.temperature == 0:
        return logits.argmax(-1)
    probs = filter_logits(logits / cfg.temperature, cfg.top_k, cfg.top_p).softmax(-1)
    codes = torch.multinomial(probs, 1, generator=gen)[:, 0]                      # [K]
    if cfg.ras_window and history.shape[1]:
        window = history[:, -cfg.ras_window:]                                      # [K, W]
        repeats = (window == codes[:, None]).sum(-1)                               # [K]
        redo = repeats >= cfg.ras_max_repeats
        if redo.any():
            raw = torch.multinomial(logits.softmax(-1), 1, generator=gen)[:, 0]
            codes = torch.where(redo, raw, codes)
    return codes
