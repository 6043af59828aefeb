"""When a generated audio stream ends, and why: the stop rules shared by every generation path.

The engine (inference/engine.py), the fine-tuning stop check (recipes/finetune/stops.py) and the
evaluation harness (higgs_train/evaluate/harness.py) all use these rules, so a chunk is cut the
same way, and reported with the same reason, in training, evaluation and serving.

    rules = StopRules()                                      # the defaults below
    watch = StopWatch(rules, "Hello there.", frame_rate=25, max_frames=1500, hop=960, decode=decode)
    ... after every decode step: cut = watch.update(frames)  # frames [K, n] complete so far
    ... cut is not None: keep frames[:, :cut], the chunk has ended (watch.reason: silence | loop)
    codes = watch.end(codes)                                 # the whole chunk -> trimmed codes; watch.reason

Reasons (STOP_REASONS): `eos` the model ended the stream; `budget` it reached the frame budget of
its text; `silence` its audio stayed silent for `silence_s` after speech began; `loop` its last
`loop_s` of codebook 0 repeated an earlier span; `max_frames` it reached the hard cap
(sampling.max_frames) before its budget.

The budget: a text's expected duration (expected_seconds: letters, CJK characters, digits and
clause-ending punctuation, each at a measured rate, RATES) times `budget_factor`, at least
`budget_floor_s`, at most max_frames. RATES and the defaults come from benchmarks/speech_rates.py
(the recorded clips of tests/fixtures/real_speech and the espeak-ng corpus of data_pipeline/synth.py;
the figures are in benchmarks/README.md).

Nothing here changes a stream the model ends by itself before every guard: the frames are the
model's, untrimmed (the guards only read them).
"""
from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np
import torch
from torch import Tensor

STOP_REASONS = ("eos", "budget", "silence", "loop", "max_frames")

# seconds per unit of text, measured by benchmarks/speech_rates.py (benchmarks/README.md)
RATES = {"letter": 0.074, "cjk": 0.319, "digit": 0.296, "pause": 0.51}
DIGIT_LETTERS = 4.0   # a digit is read as a word: English digit names average 4.0 letters (zero..nine)

# text the model does not speak: speaker tags, bracketed sound events ([laugh]), markup tokens
_UNSPOKEN = re.compile(r"\[[^\]]*\]|<\|[^|]*\|>|<[^>]*>")
_PAUSES = set(",;:.!?…—–，、；：。！？")


def _cjk(ch: str) -> bool:
    """Characters spoken as a syllable each: CJK ideographs, kana, Hangul syllables."""
    o = ord(ch)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0xF900 <= o <= 0xFAFF or 0x20000 <= o <= 0x2FFFF
            or 0x3040 <= o <= 0x30FF or 0xAC00 <= o <= 0xD7AF)


def text_units(text: str) -> dict[str, int]:
    """Counts of what takes time to say: letters (any alphabet), CJK characters, digits, and
    pauses (a run of clause-ending punctuation counts once: "?!" or "..." is one pause)."""
    counts = {"letter": 0, "cjk": 0, "digit": 0, "pause": 0}
    prev_pause = False
    for ch in _UNSPOKEN.sub(" ", text):
        pause = ch in _PAUSES
        if pause and not prev_pause:
            counts["pause"] += 1
        elif _cjk(ch):
            counts["cjk"] += 1
        elif unicodedata.category(ch) == "Nd":
            counts["digit"] += 1
        elif unicodedata.category(ch).startswith("L"):
            counts["letter"] += 1
        prev_pause = pause or (prev_pause and ch.isspace())
    return counts


def expected_seconds(text: str, rates: dict[str, float] = RATES) -> float:
    """How long a normal reading of `text` lasts (trailing punctuation's pause not counted)."""
    units = text_units(text.rstrip().rstrip("".join(_PAUSES)))
    return sum(rates[k] * n for k, n in units.items())


@dataclass
class StopRules:
    """What ends a chunk before the model does (0 turns a rule off). Defaults: benchmarks/README.md."""
    budget_factor: float = 2.5      # frames allowed = this x the text's expected duration ...
    budget_floor_s: float = 3.0     # ... but at least this many seconds (then at most sampling.max_frames)
    silence_s: float = 2.0          # this long below silence_db after speech began ends the chunk
    silence_db: float = -45.0       # a frame whose RMS (dBFS) is below this is silent
    keep_silence_s: float = 0.2     # silence kept after the last speech when a silent tail is trimmed
    loop_s: float = 2.0             # the last loop_s of codebook 0 repeating an earlier span ends it
    loop_match: float = 0.9         # share of codebook-0 codes that must agree for a repeat
    check_every: int = 25           # frames between two decodes of the silence check

    def __post_init__(self):
        if min(self.budget_factor, self.budget_floor_s, self.silence_s, self.keep_silence_s, self.loop_s) < 0 \
                or not 0 < self.loop_match <= 1 or self.check_every < 1:
            raise ValueError(f"bad stop rules {self}")

    @classmethod
    def off(cls) -> "StopRules":
        """No guard: only the hard cap (sampling.max_frames) ends a chunk the model does not end."""
        return cls(budget_factor=0, silence_s=0, loop_s=0)

    def replace(self, **overrides) -> "StopRules":
        unknown = set(overrides) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(f"unknown stop rules {sorted(unknown)}")
        return StopRules(**{**asdict(self), **{k: v for k, v in overrides.items() if v is not None}})

    def budget(self, text: str, frame_rate: float, max_frames: int) -> tuple[int, str]:
        """(frames a chunk of `text` may take, the reason when it reaches them)."""
        if not self.budget_factor:
            return max_frames, "max_frames"
        frames = math.ceil(max(self.budget_floor_s, self.budget_factor * expected_seconds(text)) * frame_rate)
        return (frames, "budget") if frames < max_frames else (max_frames, "max_frames")


def overall_reason(reasons: list[str]) -> str:
    """One reason for a result of several chunks: the first that is not eos, else eos."""
    return next((r for r in reasons if r != "eos"), "eos")


# The codec decoder sees about +-10 frames: a decode's last LOOKAHEAD frames wait for their right
# neighbours, and each decode starts CONTEXT frames before the first one it measures (as
# inference/streaming.py does).
LOOKAHEAD, CONTEXT = 10, 12
STATIONARY = 0.5     # a span whose commonest code fills more than this share is stationary (silence,
                     # a hum): the silence rule's or the budget's business, not a loop


class StopWatch:
    """The stop rules applied to one chunk while it is generated (see the module docstring)."""

    def __init__(self, rules: StopRules, text: str, frame_rate: float, max_frames: int, hop: int,
                 decode: Callable[[Tensor], np.ndarray] | None = None):
        self.rules, self.hop, self.decode = rules, hop, decode
        self.limit, self.cap_reason = rules.budget(text, frame_rate, max_frames)
        self.silence = round(rules.silence_s * frame_rate)
        self.keep = round(rules.keep_silence_s * frame_rate)
        self.loop = round(rules.loop_s * frame_rate)
        self.levels: list[float] = []   # dBFS per measured frame
        self.reason: str | None = None

    def update(self, frames: Tensor) -> int | None:
        """frames [K, n]: the chunk so far. Returns the frames to keep when a guard ends it."""
        n = frames.shape[1]
        if self.loop and n > self.loop:
            start = self._repeat_start(frames[0])
            if start is not None:
                self.reason = "loop"
                return start
        if self.silence and self.decode is not None and n - LOOKAHEAD - len(self.levels) >= self.rules.check_every:
            self._measure(frames, n - LOOKAHEAD)
            end = self._speech_end()
            if end is not None and len(self.levels) - end >= self.silence:
                self.reason = "silence"
                return end + self.keep
        return None

    def end(self, codes: Tensor) -> Tensor:
        """The finished chunk [K, F] -> what to return. A chunk no guard ended is the model's (eos,
        untouched) unless it reached its limit; a chunk a guard or a limit ended loses its silent tail."""
        if self.reason is None:
            self.reason = self.cap_reason if codes.shape[1] >= self.limit else "eos"
        if self.reason == "eos" or not self.silence or self.decode is None or codes.shape[1] == 0:
            return codes
        self._measure(codes, codes.shape[1])
        end = self._speech_end()
        return codes[:, :end + self.keep] if end is not None else codes

    # ---- rules -------------------------------------------------------------------------
    def _repeat_start(self, cb0: Tensor) -> int | None:
        """Where the last `loop` frames of codebook 0 began if they repeat an earlier span (one that
        starts at least a frame before them: a loop of any period p matches once it has run loop + p
        frames). The frames before them hold one pass of the loop; the repeat is cut."""
        n, w = len(cb0), self.loop
        last = cb0[n - w:]
        if torch.unique(last, return_counts=True)[1].max() > STATIONARY * w:
            return None
        earlier = cb0[:n - 1].unfold(0, w, 1)                        # spans starting 1..n-w frames before
        match = (earlier == last).float().mean(1)
        return n - w if bool((match >= self.rules.loop_match).any()) else None

    def _measure(self, codes: Tensor, until: int) -> None:
        """Levels (dBFS per frame) of frames [len(levels), until), decoded with left context."""
        have = len(self.levels)
        if until <= have:
            return
        start = max(0, have - CONTEXT)
        audio = np.asarray(self.decode(codes[:, start:until]), np.float32)
        audio = audio[(have - start) * self.hop:(until - start) * self.hop]
        frames = audio[:len(audio) // self.hop * self.hop].reshape(-1, self.hop).astype(np.float64)
        rms = np.sqrt(np.mean(frames ** 2, axis=1))
        self.levels += (20 * np.log10(np.maximum(rms, 1e-10))).tolist()

    def _speech_end(self) -> int | None:
        """The frame after the last one above silence_db (None before speech began)."""
        loud = np.flatnonzero(np.asarray(self.levels) >= self.rules.silence_db)
        return int(loud[-1]) + 1 if len(loud) else None
