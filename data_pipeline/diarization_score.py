"""Scoring diarization against known turns, and the real two-speaker reference that ships with
pyannote.audio (its sample conversation and RTTM), for tests/ and benchmarks/diarization.py.

DER is pyannote.metrics' with a 0.25 s collar around every reference boundary and overlapped
speech left out of the score (skip_overlap): the default backend labels one voice per instant.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def der(reference: list[dict], turns, end: float) -> float:
    """reference: [{start, end, speaker}], turns: Turn-likes (start, end, speaker); scored on [0, end]."""
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for i, u in enumerate(reference):
        ref[Segment(u["start"], u["end"]), i] = u["speaker"]
    for i, t in enumerate(turns):
        hyp[Segment(t.start, t.end), i] = t.speaker
    return DiarizationErrorRate(collar=0.25, skip_overlap=True)(ref, hyp, uem=Segment(0, end))


def pyannote_sample() -> tuple[Path, list[dict]]:
    """pyannote.audio's sample: 30 s, 16 kHz, two speakers -> (wav path, reference turns from its RTTM)."""
    spec = importlib.util.find_spec("pyannote.audio")  # the folder only: importing pyannote.audio is slow
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("pyannote.audio is not installed: its sample conversation ships inside it")
    folder = Path(next(iter(spec.submodule_search_locations))) / "sample"
    turns = []
    for line in (folder / "sample.rttm").read_text().splitlines():
        f = line.split()
        if f and f[0] == "SPEAKER":
            turns.append({"start": float(f[3]), "end": float(f[3]) + float(f[4]), "speaker": f[7]})
    return folder / "sample.wav", turns
