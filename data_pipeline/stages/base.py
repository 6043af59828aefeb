"""What the stages exchange. Times are seconds from the start of the source.

Stage classes (each built with hydra.utils.instantiate from configs/pipeline/<stage>/<backend>.yaml):

    vad(wav16, sr)                          -> list[tuple[float, float]]   speech regions
    diarization(wav16, sr, speech)          -> list[Turn]                  non-overlapping turns
    quality.score(clips, sr)                -> list[dict]                  one dict of scores per clip
    transcribe.transcribe(clips, sr, segments, source_path) -> list[Transcript]

Analysis runs on 16 kHz mono float32 (`ANALYSIS_SR`); export reads 24 kHz.
"""
from __future__ import annotations

from dataclasses import dataclass, field

ANALYSIS_SR = 16_000


@dataclass
class Turn:
    """A stretch of one speaker's speech. `speaker` is unique within its source (e.g. "S0")."""

    start: float
    end: float
    speaker: str

    @property
    def duration(self) -> float:
        return self.end - self.start


@dataclass
class Transcript:
    text: str
    language: str = ""


@dataclass
class Segment:
    """A candidate training example cut from one source."""

    start: float
    end: float
    speaker: str
    text: str = ""
    language: str = ""
    quality: dict = field(default_factory=dict)

    @property
    def duration(self) -> float:
        return self.end - self.start
