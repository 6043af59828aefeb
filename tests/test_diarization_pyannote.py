"""pyannote backend: a pyannote.audio 4 pipeline built here (tiny PyanNet trained on generated
conversations, random XVectorMFCC embedding, PLDA fitted on it) and loaded from its folder exactly
as a downloaded pipeline is: config.yaml with "$model/<part>" references. Nothing touches a hub."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from data_pipeline.stages.base import ANALYSIS_SR, Turn
from data_pipeline.stages.diarization_pyannote import PyannoteDiarizer, check_pipeline_dir, turns_from_annotation
from higgs_train.audio import load_audio

CONFIG = Path(__file__).parents[1] / "configs/pipeline/diarization/pyannote.yaml"


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory) -> Path:
    from data_pipeline.tiny_pyannote import build
    return build(tmp_path_factory.mktemp("pyannote") / "tiny", minutes=1.5, steps=40, seed=0)


def build_stage(**overrides):
    from hydra.utils import instantiate
    from omegaconf import OmegaConf
    return instantiate(OmegaConf.load(CONFIG), **overrides)


@pytest.mark.slow
def test_tiny_pipeline_has_the_downloaded_layout(tiny_pipeline):
    for rel in ("config.yaml", "segmentation/pytorch_model.bin", "embedding/pytorch_model.bin",
                "plda/xvec_transform.npz", "plda/plda.npz"):
        assert (tiny_pipeline / rel).is_file(), rel
    params = yaml.safe_load((tiny_pipeline / "config.yaml").read_text())["pipeline"]["params"]
    assert params["segmentation"] == "$model/segmentation" and params["plda"] == "$model/plda"


@pytest.mark.slow
def test_loads_from_its_folder_and_returns_turns(tiny_pipeline, conversation):
    import os
    stage = build_stage(path=str(tiny_pipeline))
    assert isinstance(stage, PyannoteDiarizer)
    assert os.environ["PYANNOTE_METRICS_ENABLED"] == "0"

    path, utts = conversation("pyannote_2spk.wav", n_speakers=2, n_turns=4, seed=5, sample_rate=ANALYSIS_SR)
    wav, sr = load_audio(path, ANALYSIS_SR)
    speech = [(u["start"], u["end"]) for u in utts]
    turns = stage(wav, sr, speech)

    assert turns and all(isinstance(t, Turn) for t in turns)
    assert all(t.end > t.start for t in turns)
    assert all(a.end <= b.start for a, b in zip(turns, turns[1:]))
    assert all(any(s - 1e-3 <= t.start and t.end <= e + 1e-3 for s, e in speech) for t in turns)
    labels = list(dict.fromkeys(t.speaker for t in turns))
    assert labels == [f"S{i}" for i in range(len(labels))]
    # 40 steps on 1.5 minutes are enough for the segmentation model to find clean, loud speech
    assert sum(t.duration for t in turns) >= 0.8 * sum(e - s for s, e in speech)
    assert stage(wav, sr, []) == []


def test_missing_or_hub_pipeline_is_a_clear_error(tmp_path):
    missing = tmp_path / "no_such_pipeline"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing / "config.yaml"))):
        PyannoteDiarizer(path=str(missing))
    with pytest.raises(Exception, match=re.escape(str(missing))):  # hydra wraps it, keeping the message
        build_stage(path=str(missing))
    with pytest.raises(Exception, match="diarization.path is not set"):
        build_stage()  # path: null in the config

    hub = tmp_path / "hub"
    hub.mkdir()
    (hub / "config.yaml").write_text(yaml.safe_dump(
        {"pipeline": {"name": "pyannote.audio.pipelines.SpeakerDiarization",
                      "params": {"segmentation": "pyannote/segmentation-3.0", "embedding": "$model/embedding"}}}))
    with pytest.raises(FileNotFoundError, match="never fetched from a hub"):
        check_pipeline_dir(hub)
    def config(**params):
        (hub / "config.yaml").write_text(yaml.safe_dump(
            {"pipeline": {"name": "pyannote.audio.pipelines.SpeakerDiarization", "params": params}}))

    config(segmentation="$model/segmentation", embedding="$model/embedding", plda="$model/plda")
    with pytest.raises(FileNotFoundError, match=re.escape(str(hub / "embedding/pytorch_model.bin"))):
        check_pipeline_dir(hub)
    (hub / "embedding").mkdir()
    (hub / "embedding/pytorch_model.bin").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=re.escape(str(hub / "plda/xvec_transform.npz"))):
        check_pipeline_dir(hub)
    # a part left out would be pyannote's default: a hub checkpoint
    config(segmentation="$model/segmentation", embedding="$model/embedding")
    with pytest.raises(FileNotFoundError, match="plda = None"):
        check_pipeline_dir(hub)


def test_overlapped_speech_is_dropped_and_turns_cut_to_speech():
    from pyannote.core import Annotation, Segment

    ann = Annotation()
    ann[Segment(0.0, 5.0)] = "SPEAKER_01"
    ann[Segment(4.0, 8.0)] = "SPEAKER_00"   # 4-5 s: both talk
    ann[Segment(9.0, 12.0)] = "SPEAKER_01"
    turns = turns_from_annotation(ann, [(0.5, 10.0), (10.5, 11.0)])
    assert [(t.start, t.end, t.speaker) for t in turns] == [
        (0.5, 4.0, "S0"), (5.0, 8.0, "S1"), (9.0, 10.0, "S0"), (10.5, 11.0, "S0")]
