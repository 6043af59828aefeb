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

from data_pipeline.stages.base import ANALYSIS_SR, Diarizer, Turn

# pyannote.audio 4 sends usage metrics unless told not to (read when it is first imported).
os.environ["PYANNOTE_METRICS_ENABLED"] = "0"

_PARTS = ("segmentation", "embedding", "plda")


def check_pipeline_dir(path) -> Path:
    """The pipeline folder, after checking that it and every local part its config.yaml names exist.
    Anything else (a hub id, a missing file) is a FileNotFoundError naming the path."""
    import yaml

    root = Path(path).expanduser() if path else None
    hint = ("set diarization.path to a local pyannote pipeline folder (config.yaml + segmentation/, "
            "embedding/, plda/), e.g. one built by `python -m data_pipeline.tiny_pyannote out_dir=DIR` "
            "or a pretrained pipeline downloaded once")
    if root is None:
        raise FileNotFoundError(f"diarization.path is not set: {hint}")
    if not (root / "config.yaml").is_file():
        raise FileNotFoundError(f"pyannote pipeline not found: {root / 'config.yaml'} does not exist ({hint})")
    config = yaml.safe_load((root / "config.yaml").read_text()) or {}
    pipeline = config.get("pipeline") or {}
    params = pipeline.get("params") or {}
    parts = sorted(set(_PARTS) & set(params) | set(_hub_defaults(pipeline.get("name"))))
    for part in parts:  # first: every model part must be local
        ref = params.get(part)
        if not (isinstance(ref, str) and (ref.startswith("$model/") or Path(ref).expanduser().exists())):
            raise FileNotFoundError(f"{root / 'config.yaml'}: {part} = {ref!r} is neither '$model/<subfolder>' "
                                    f"nor an existing local path; models are never fetched from a hub ({hint})")
    for part in parts:  # then: the files of the "$model/<subfolder>" parts must exist
        ref = params[part]
        if ref.startswith("$model/"):
            where = root / ref[len("$model/"):].split("@")[0]
            for p in ([where / "xvec_transform.npz", where / "plda.npz"] if part == "plda"
                      else [where / "pytorch_model.bin"]):
                if not p.is_file():
                    raise FileNotFoundError(f"pyannote pipeline {root}: {part} file {p} does not exist ({hint})")
    return root


def _hub_defaults(name: str | None) -> list[str]:
    """Parameters of the pipeline class whose default points at a hub checkpoint: config.yaml must
    set them, or pyannote would download them."""
    import inspect

    from pyannote.core.utils.helper import get_class_by_name

    try:
        klass = get_class_by_name(name, default_module_name="pyannote.pipeline.blocks")
    except (ImportError, AttributeError, ValueError, TypeError):
        return list(_PARTS)
    out = []
    for k, p in inspect.signature(klass.__init__).parameters.items():
        d = p.default
        if (isinstance(d, dict) and "checkpoint" in d) or (isinstance(d, str) and "/" in d and not Path(d).exists()):
            out.append(k)
    return out


class PyannoteDiarizer(Diarizer):
    """diarizer(wav16, sr, speech) -> list[Turn] with a local pyannote.audio pipeline. Every part is
    checked to be a local file first (check_pipeline_dir), so pyannote takes its local-folder path
    and never calls a hub.

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
        if sr != ANALYSIS_SR:
            raise ValueError(f"PyannoteDiarizer expects {ANALYSIS_SR} Hz analysis audio, got {sr}")
        wav = np.asarray(wav16, dtype=np.float32).reshape(-1)
        if len(wav) == 0 or not any(b > a for a, b in speech):
            return []
        out = self.pipeline({"waveform": torch.from_numpy(wav)[None], "sample_rate": sr, "uri": "source"},
                            num_speakers=self.num_speakers, min_speakers=self.min_speakers,
                            max_speakers=self.max_speakers)
        return turns_from_annotation(getattr(out, "speaker_diarization", out), speech)  # DiarizeOutput or legacy


def turns_from_annotation(annotation, speech: list[tuple[float, float]]) -> list[Turn]:
    """pyannote Annotation -> sorted, non-overlapping turns: overlapped speech removed, the rest cut
    to the speech regions, labels renamed S0, S1, ... in order of first appearance."""
    from pyannote.core import Segment, Timeline

    keep = Timeline([Segment(float(a), float(b)) for a, b in speech if b > a]).support()
    overlap = annotation.get_overlap()
    if overlap:
        keep = keep.extrude(overlap)
    turns = sorted((seg.start, seg.end, label) for seg, _, label in
                   annotation.crop(keep, mode="intersection").itertracks(yield_label=True) if seg.duration > 0)
    names: dict = {}
    return [Turn(round(float(a), 3), round(float(b), 3), names.setdefault(k, f"S{len(names)}")) for a, b, k in turns]
