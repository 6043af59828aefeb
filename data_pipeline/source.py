"""One source being curated: what every stage reads and adds to. The stage protocol is one method,

    stage.run(src: Source) -> None

called for each stage of configs' `stages:` list in order, until one ends the source. A stage
reads what earlier stages left on `src`, adds its own, and turns bad input into a rejection
(`src.drop` for one segment, `src.end` for the whole source) instead of raising. A class
attribute `cost` (share of a source's processing time; 0.05 if absent) moves the progress bar.

Fields, in the order the default stages (ingest, vad, diarization, segment, quality, transcribe,
export) fill them:
    audio     Decoded (ingest): .wav16 (16 kHz analysis copy), .read24(start, end), .duration, .sha1
    speech    [(start, end)] seconds (vad)
    turns     [Turn] (diarization)
    segments  [Segment] the kept candidates (segment): .id, .start, .end, .speaker, then .quality
              (quality; any stage may add a score to it), .text and .language (transcribe: the
              language its backend detected or was told) and the transcriber's scores in .quality
              (`asr_confidence` from every backend, 0..1; Whisper adds `asr_avg_logprob` and
              `asr_no_speech_prob`), thresholded by the filter like any other score
    rec       the source's record (data_pipeline/records.py): rejections, audio info, exported rows
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from data_pipeline.stages.base import Segment

CHUNK_SECONDS = 600.0  # audio per chunks() item: scoring and transcribing a multi-hour source stay bounded


@dataclass
class Source:
    rel: str                 # path relative to input_dir (the record's `source`)
    path: Path               # the file
    rec: dict                # its record, filled in as the stages go
    parts: Path              # OUT/parts: where the export stage writes the source's part
    claim: Callable[[str], str | None]   # register the audio's hash -> an earlier input with the same audio
    stage: str = ""          # the stage running now (set by the runner): rejections name it
    progress: Callable[[float], None] = lambda fraction: None   # of the current stage, 0..1
    audio: object = None
    speech: list | None = None
    turns: list | None = None
    segments: list[Segment] = field(default_factory=list)
    ended: bool = False

    @property
    def key(self) -> str:
        return self.rec["key"]

    def _row(self, reason: str, detail: str | None, seg: Segment | None) -> dict:
        row = {"source": self.rel, "stage": self.stage, "reason": reason}
        if detail:
            row["detail"] = detail
        if seg is not None:
            row.update(start=seg.start, end=seg.end, speaker=seg.speaker, id=seg.id)
        self.rec["rejected"].append(row)
        return row

    def drop(self, seg: Segment, reason: str, detail: str | None = None) -> dict:
        """Reject one candidate segment (it leaves `segments` if it is there); returns its rejected row."""
        row = self._row(reason, detail, seg)
        self.segments = [s for s in self.segments if s is not seg]
        return row

    def end(self, reason: str | None = None, detail: str | None = None) -> None:
        """No later stage runs; with a reason, the whole source is rejected with it."""
        if reason:
            self._row(reason, detail, None)
        self.segments = [] if reason else self.segments
        self.ended = True

    def chunks(self, seconds: float | None = None) -> list[list[Segment]]:
        """Consecutive runs of `segments` with at most `seconds` (CHUNK_SECONDS) of audio each (at
        least one segment each)."""
        return list(_chunks(self.segments, CHUNK_SECONDS if seconds is None else seconds))


def _chunks(segments: list[Segment], seconds: float) -> Iterator[list[Segment]]:
    chunk, total = [], 0.0
    for s in segments:
        if chunk and total + s.duration > seconds:
            yield chunk
            chunk, total = [], 0.0
        chunk.append(s)
        total += s.duration
    if chunk:
        yield chunk
