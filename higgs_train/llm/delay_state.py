"""One audio stream being generated under the delay pattern: what each codebook may hold next, and
which frames are complete. The engine keeps one per row; nothing here knows of models or batches.

    state = DelayState(num_codebooks=8, bos=1024, eos=1025, audio_vocab=1026, max_frames=1500)
    while not state.done:
        codes = sample(logits, allowed=state.allowed(), history=state.history())   # [K]
        fed = state.push(codes)        # what the model reads at this position (EOS spread)
        frames = state.frames()        # [K, F] frames every codebook has reached (delay reverted)
    state.end(cut)                     # a stop rule ends the stream after frame `cut`

The stream (higgs_train.llm.delay): position j of codebook k holds frame j - k; frame 0 is the
all-BOS frame the prompt already fed, so position 0 is never drawn and positions with j <= k are
BOS. What position j allows, per codebook (frame f = j - k):
    f <= 0                  BOS only (the codebook has not started)
    f >= the EOS frame      EOS only (the stream has ended in an earlier-drawn codebook)
    f > max_frames          EOS only (the frame limit)
    f == 1                  any code, not EOS (a stream holds at least one real frame)
    otherwise               any code or EOS; never BOS
When codebook c draws EOS at position j, frame j - c is the EOS frame: every codebook holds EOS
from that frame on, the codebooks before c at once (at position j), the later ones as their delay
reaches it, and the stream ends at position (EOS frame) + K - 1, where every codebook holds EOS.

Against the references (tests/test_delay_state.py measures each): the BOS rule is the release's
(it overwrites codebooks k > j with BOS after sampling) and the transformers port's (its logits
processor masks them); the end is the release's in length (both end at position EOS frame + K - 1)
and in the earlier codebooks (forced to EOS at once), but the release leaves each later codebook's
code at the EOS frame free (forced only from the next frame on) and the port forces codebook k
from position j + 1 + k. Every reference drops the last frame it emits, so the codes a stream
returns are the same wherever the model's choices are; ours spreads EOS to the whole EOS frame so
that no codebook feeds the model a code for a frame that has already ended.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
from torch import Tensor

from higgs_train.llm.delay import strip_stream

BOS_ONLY, EOS_ONLY, CODE_OR_EOS, CODE_ONLY = range(4)


@lru_cache(maxsize=None)
def _mask(num_codebooks: int, audio_vocab: int, bos: int, eos: int, pattern: tuple[int, ...]) -> Tensor:
    """[K, A] bool for one pattern of per-codebook states; made once, shared read-only by every row."""
    allowed = torch.zeros(num_codebooks, audio_vocab, dtype=torch.bool)
    for k, state in enumerate(pattern):
        if state == BOS_ONLY:
            allowed[k, bos] = True
        elif state == EOS_ONLY:
            allowed[k, eos] = True
        else:
            allowed[k, :bos] = True
            allowed[k, eos] = state == CODE_OR_EOS
    return allowed


class DelayState:
    """One row's delayed stream: positions 0..j written, stream[:, 0] the fed BOS frame."""

    def __init__(self, num_codebooks: int, bos: int, eos: int, audio_vocab: int, max_frames: int):
        self.K, self.bos, self.eos, self.audio_vocab, self.max_frames = num_codebooks, bos, eos, audio_vocab, max_frames
        # every position the stream can reach: the BOS frame, max_frames frames, the EOS frame's delay
        self.stream = torch.full((num_codebooks, max_frames + num_codebooks + 1), eos, dtype=torch.long)
        self.stream[:, 0] = bos
        self.j = 0                      # the last position written
        self.eos_frame = math.inf       # the first frame that is EOS in every codebook
        self.done = False

    @classmethod
    def for_model(cls, cfg, max_frames: int) -> "DelayState":
        """A state for a model config with num_codebooks, audio_bos, audio_eos and audio_vocab."""
        return cls(cfg.num_codebooks, cfg.audio_bos, cfg.audio_eos, cfg.audio_vocab, max_frames)

    def allowed(self) -> Tensor:
        """[K, A] bool: what each codebook may hold at the next position (read only)."""
        j = self.j + 1
        pattern = tuple(BOS_ONLY if f <= 0 else EOS_ONLY if f >= self.eos_frame or f > self.max_frames
                        else CODE_OR_EOS if f >= 2 else CODE_ONLY for f in range(j, j - self.K, -1))
        return _mask(self.K, self.audio_vocab, self.bos, self.eos, pattern)

    def history(self) -> Tensor:
        """[K, j] the codes drawn so far (positions 1..j), for repetition-aware sampling."""
        return self.stream[:, 1:self.j + 1]

    def push(self, codes: Tensor) -> Tensor:
        """Write the next position from drawn codes [K]; returns what it holds (EOS spread), the
        frame the model is fed next."""
        self.j += 1
        frame = self.j - torch.arange(self.K)                       # the frame each codebook is at
        drew = codes == self.eos
        if drew.any():
            self.eos_frame = min(self.eos_frame, int(frame[drew].min()))
        codes = torch.where(frame >= self.eos_frame, self.eos, codes)
        self.stream[:, self.j] = codes
        self.done = self.j >= self.eos_frame + self.K - 1
        return codes

    def end(self, cut: int) -> None:
        """A stop rule ends the stream after frame `cut` (<= the frames complete so far)."""
        self.eos_frame, self.done = cut + 1, True

    def frames(self) -> Tensor:
        """[K, F] frames every codebook has reached (delay reverted, BOS/EOS frames dropped): the
        complete ones while running, the whole stream once done."""
        if self.done:
            return strip_stream(self.stream[:, :int(self.eos_frame) + self.K], self.bos, self.eos)
        n = min(self.j - self.K + 1, int(min(self.eos_frame, 1e9)) - 1)    # frames 1..n are complete
        if n <= 0:
            return self.stream.new_zeros(self.K, 0)
        return torch.stack([self.stream[k, 1 + k:1 + k + n] for k in range(self.K)])
