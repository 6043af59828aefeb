"""What the stages exchange. Times are seconds from the start of the source.

Every stage (built with hydra.utils.instantiate from configs/pipeline/<stage>/<backend>.yaml) has
the one method the runner calls, `run(src)` (data_pipeline/source.py), and the call its own
work is done by, which tests and other tools use directly:

    vad(wav16, sr)                          -> list[tuple[float, float]]   speech regions
    diarization(wav16, sr, speech)          -> list[Turn]                  non-overlapping turns
    segment(turns, speech, wav16, sr)       -> (kept [Segment], dropped [(Segment, reason)])
    quality.score(clips, sr)                -> list[dict]                  one dict of scores per clip
    transcribe.transcribe(clips, sr, segments, source_path) -> list[Transcript]

Analysis runs on 16 kHz mono float32 (`ANALYSIS_SR`); export reads 24 kHz (`EXPORT_SR`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from higgs_train.shards import SAMPLE_RATE as EXPORT_SR

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
    """What a backend heard in one segment. `scores` go into the segment's `quality` dict, where the
    filter thresholds them: every backend gives `asr_confidence` (0..1, how far the text can be
    trusted; its meaning per backend in data_pipeline/stages/transcribe.py). `rejected` is a reason
    (with `detail`) when the backend cannot transcribe this speech at all, e.g. a language its model
    does not know: the segment is dropped with it instead of keeping a transcript in the wrong words."""

    text: str
    language: str = ""
    scores: dict = field(default_factory=dict)
    rejected: str = ""
    detail: str = ""


@dataclass
class Segment:
    """A candidate training example cut from one source."""

    start: float
    end: float
    speaker: str
    text: str = ""
    language: str = ""
    quality: dict = field(default_factory=dict)
    id: str = ""     # <source key>_NNNN, in time order over all of a source's pieces (segment stage)

    @property
    def duration(self) -> float:
        return self.end - self.start


class Diarizer:
    """The diarization stage's run(): subclasses implement __call__(wav16, sr, speech) -> [Turn]."""

    cost = 0.10

    def run(self, src) -> None:
        src.turns = self(src.audio.wav16, ANALYSIS_SR, src.speech)
        if not src.turns:
            src.end("no_speaker_turns")


class TranscriptError(Exception):
    """A source a transcription backend cannot transcribe; `reason` goes into rejected.jsonl."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


class Transcriber:
    """The transcription stage's run(): subclasses implement transcribe(clips16, sr, segments,
    source_path) -> [Transcript], raising TranscriptError for a source they cannot transcribe."""

    cost = 1.0
    produces_text = True   # the record says `transcribed`: finalize applies the text filters

    def run(self, src) -> None:
        chunks = src.chunks()
        wav16 = src.audio.wav16
        for i, chunk in enumerate(chunks):
            clips16 = [wav16[int(round(s.start * ANALYSIS_SR)):int(round(s.end * ANALYSIS_SR))] for s in chunk]
            try:
                transcripts = self.transcribe(clips16, ANALYSIS_SR, chunk, str(src.path))
            except TranscriptError as e:  # e.g. no sidecar transcript for this file
                src.end("no_transcript", e.reason)
                return
            for s, tr in zip(chunk, transcripts):
                s.text, s.language = tr.text.strip(), tr.language
                s.quality.update(tr.scores)
                if tr.rejected:  # the row keeps its scores: the report places it on the histograms
                    src.drop(s, tr.rejected, tr.detail).update(quality=s.quality, duration=s.duration)
            src.progress((i + 1) / len(chunks))
