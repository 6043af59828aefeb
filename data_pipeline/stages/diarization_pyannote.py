"""Diarization with a pyannote.audio 4 pipeline loaded from a LOCAL folder (never from a model hub).

    python -m data_pipeline ... diarization=pyannote diarization.path=/models/speaker-diarization-community-1

The folder is what a pyannote pipeline download contains: `config.yaml` naming the pipeline class,
its parts as "$model/<subfolder>" (segmentation/pytorch_model.bin, embedding/pytorch_model.bin,
plda/*.npz) and its hyper-parameters. `python -m data_pipeline.tiny_pyannote out_dir=DIR` builds a
small one here (used by the tests).

Turns: pyannote's diarization with overlapped speech removed (a stretch where two speakers talk at
once is no training material for either), cut to the VAD speech regions the pipeline was given, so
every stage downstream sees the same speech. Labels become S0, S1, ... in order of appearance.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from data_pipeline.stages.base import ANALYSIS_SR, Turn

os.environ["PYANNOTE_METRICS_ENABLED"] = "0"  # pyannote.audio 4 sends usage metrics unless told not to
os.environ["HF_HUB_OFFLINE"] = "1"            # belt and braces: a hub lookup fails at once instead of waiting

_PARTS = ("segmentation", "embedding", "plda")


def check_pipeline_dir(path) -> Path:
    """The pipeline folder, after checking that it and every local part its config.yaml names exist.
    Anything else (a hub id, a missing file) is a FileNotFoundError naming the path."""
    import yaml

    root = Path(path).expanduser() if path else None
    hint = ("set diarization.path to a local pyannote pipeline folder (config.yaml + segmentation/, "
            "embedding/, plda/), e.g. one built by `python -m data_pipeline.tiny_pyannote out_dir=DIR` "
            "or a pretrained pipeline downloaded once")
    if root is None or not (root / "config.yaml").is_file():
        raise FileNotFoundError(f"pyannote pipeline not found: {root}/config.yaml does not exist ({hint})")
    config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    params = (config.get("pipeline") or {}).get("params") or {}
    for part in _PARTS:
        ref = params.get(part)
        if ref is None:
            continue
        if isinstance(ref, str) and ref.startswith("$model/"):
            where = root / ref[len("$model/"):].split("@")[0]
            needed = [where / "pytorch_model.bin"] if part != "plda" else [where / "xvec_transform.npz",
                                                                          where / "plda.npz"]
        elif isinstance(ref, str) and Path(ref).expanduser().exists():
            continue
        else:
            raise FileNotFoundError(f"{root}/config.yaml: {part} = {ref!r} is neither '$model/<subfolder>' "
                                    f"nor an existing local path; models are never fetched from a hub ({hint})")
        for p in needed:
            if not p.is_file():
                raise FileNotFoundError(f"pyannote pipeline {root}: {part} file {p} does not exist ({hint})")
    return root


class PyannoteDiarizer:
    """diarizer(wav16, sr, speech) -> list[Turn] with a local pyannote.audio pipeline.

    path:          the pipeline folder (config.yaml + parts)
    num_speakers:  the count when it is known; null: the pipeline estimates it
    min_speakers, max_speakers: bounds of the estimate (null: none)
    device:        "cpu" or "cuda"
    """

    def __init__(self, path: str | None = None, num_speakers: int | None = None, min_speakers: int | None = None,
                 max_speakers: int | None = None, device: str = "cpu"):
        from pyannote.audio import Pipeline

        self.path = check_pipeline_dir(path)
        self.pipeline = Pipeline.from_pretrained(self.path)
        self.pipeline.to(torch.device(device))
        self.num_speakers = num_speakers
        self.min_speakers = min_speakers
        self.max_speakers = max_speakers

    def __call__(self, wav16: np.ndarray, sr: int, speech: list[tuple[float, float]]) -> list[Turn]:
        from pyannote.core import Annotation, Segment, Timeline

        if sr != ANALYSIS_SR:
            raise ValueError(f"PyannoteDiarizer expects {ANALYSIS_SR} Hz analysis audio, got {sr}")
        wav = np.asarray(wav16, dtype=np.float32).reshape(-1)
        speech_tl = Timeline([Segment(float(a), float(b)) for a, b in speech if b > a]).support()
        if len(wav) == 0 or not speech_tl:
            return []
        out = self.pipeline({"waveform": torch.from_numpy(wav)[None], "sample_rate": sr, "uri": "source"},
                            num_speakers=self.num_speakers, min_speakers=self.min_speakers,
                            max_speakers=self.max_speakers)
        ann: Annotation = getattr(out, "speaker_diarization", out)  # DiarizeOutput, or Annotation (legacy)
        keep = speech_tl.extrude(ann.get_overlap()) if ann.get_overlap() else speech_tl
        turns = []
        for seg, _, label in ann.crop(keep, mode="intersection").itertracks(yield_label=True):
            if seg.duration > 0:
                turns.append((seg.start, seg.end, label))
        turns.sort()
        names: dict = {}
        return [Turn(round(a, 3), round(b, 3), names.setdefault(k, f"S{len(names)}")) for a, b, k in turns]
