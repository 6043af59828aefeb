"""Decoding code frames to audio while they are generated, with seams that cannot be heard.

The codec decoder is a stack of convolutions: the audio of a frame depends on a few frames
either side. Each decode therefore sees `context` frames on the left that were already played,
and the last `lookahead` frames it produces are held back (their right neighbours do not exist
yet) and redone by the next decode. The first `crossfade` frames of every new piece are blended
with the previous decode's version of them (a linear fade: the two versions are nearly equal, so
their gains must sum to one), so what remains of the
difference is spread over a few milliseconds. Away from these crossfades the streamed audio
equals decoding all frames at once.

    dec = StreamDecoder(decode_fn, hop=960, context=12, lookahead=10, crossfade=3)
    for frames in ...: audio = dec.push(frames)   # frames [K, n] -> float32 samples (maybe empty)
    audio = dec.flush()                           # the rest
    for audio in stream_request(engine, request): play(audio)   # what Engine.stream runs
"""
from __future__ import annotations

from typing import Callable, Iterator

import numpy as np
import torch


class StreamDecoder:
    def __init__(self, decode: Callable[[torch.Tensor], np.ndarray], hop: int, context: int, lookahead: int,
                 crossfade: int):
        if crossfade > lookahead:
            raise ValueError("crossfade frames must be <= lookahead frames (the fade needs the held audio)")
        self.decode, self.hop = decode, hop
        self.context, self.lookahead, self.crossfade = context, lookahead, crossfade
        self.codes: torch.Tensor | None = None   # [K, N] every frame so far
        self.emitted = 0                          # frames whose audio has been returned
        self.held: np.ndarray | None = None       # previous decode's audio of frames [emitted, ...)

    @property
    def frames(self) -> int:
        return 0 if self.codes is None else self.codes.shape[1]

    def push(self, frames: torch.Tensor, min_new: int = 1) -> np.ndarray:
        """Add frames [K, n]; decode when >= min_new frames can be emitted, else return nothing."""
        if frames.shape[1]:
            self.codes = frames if self.codes is None else torch.cat([self.codes, frames], 1)
        if self.frames - self.lookahead - self.emitted < min_new:
            return np.zeros(0, np.float32)
        return self._emit(self.frames - self.lookahead)

    def truncate(self, frames: int) -> None:
        """Drop the frames after the first `frames` that have not been returned yet."""
        if self.codes is not None and frames < self.frames:
            self.codes = self.codes[:, :max(frames, self.emitted)]

    def flush(self) -> np.ndarray:
        return self._emit(self.frames) if self.frames > self.emitted else np.zeros(0, np.float32)

    def _emit(self, until: int) -> np.ndarray:
        start = max(0, self.emitted - self.context)
        audio = self.decode(self.codes[:, start:])                       # frames [start, N)
        new = audio[(self.emitted - start) * self.hop:]                  # frames [emitted, N)
        out = new[:(until - self.emitted) * self.hop].copy()
        if self.held is not None:
            n = min(len(self.held), len(out), self.crossfade * self.hop)
            t = (np.arange(n, dtype=np.float32) + 0.5) / n
            out[:n] = self.held[:n] * (1 - t) + out[:n] * t
        self.held = new[len(out):]
        self.emitted = until
        return out


def stream_request(engine, request, stop_reasons: list[str] | None = None) -> Iterator[np.ndarray]:
    """An inference Engine's request as float32 audio pieces while it is generated: the first after
    EngineConfig.first_chunk_frames frames. stop_reasons: a list that receives each text chunk's
    stop reason as it ends. Audio already streamed stays sent: a silence stop's tail is trimmed
    from what is still held back."""
    c = engine.cfg
    plan = engine.plan(request)
    dec = StreamDecoder(engine.decode, engine.codec.hop, c.decode_context_frames, c.lookahead_frames,
                        c.crossfade_frames)
    done: list[torch.Tensor] = []
    for ci in range(len(plan.chunks)):
        row = engine.row(request, plan, ci, done)
        sent = 0
        for frames in engine.decode_frames([row]):
            new = frames[0][:, sent:]
            sent += new.shape[1]
            out = dec.push(new, min_new=c.first_chunk_frames if dec.emitted == 0 else c.stream_chunk_frames)
            if len(out):
                yield out
        done.append(row.watch.end(frames[0]))
        dec.truncate(dec.frames - sent + done[-1].shape[1])   # a trimmed tail not yet played goes
        if stop_reasons is not None:
            stop_reasons.append(row.watch.reason)
    tail = dec.flush()
    if len(tail):
        yield tail
