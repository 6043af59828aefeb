"""Curation is an ordered list of stages with one protocol: a stage is added from
config alone (its class here, no edit to data_pipeline), runs where the list puts it, and its
output reaches the manifest; a stage that drops segments is obeyed; a wrong list is a clear error."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir

from data_pipeline.config import config_args
from data_pipeline.run import build_stages, curate, processing_fingerprint
from data_pipeline.config import CONFIG_DIR
from higgs_train.shards import decode_flac, iter_shard

COMMON = ["filter.min.dnsmos_ovrl=1.0", "quality.metrics.dnsmos.hop_seconds=9.01", "transcribe=sidecar", "workers=1"]
DEFAULT = ["ingest", "vad", "diarization", "segment", "quality", "transcribe", "export"]


class PeakLevel:
    """The README's worked example: each kept segment's peak level (dBFS) into its quality scores."""

    cost = 0.01

    def __init__(self, floor_db: float = -60.0):
        self.floor_db = floor_db

    def run(self, src) -> None:
        for s in src.segments:
            peak = float(np.abs(src.audio.read24(s.start, s.end)).max())
            s.quality["peak_dbfs"] = round(max(20 * math.log10(max(peak, 1e-12)), self.floor_db), 2)


class DropSpeaker:
    """Drops every segment of one speaker label, with a reason."""

    def __init__(self, speaker: str):
        self.speaker = speaker

    def run(self, src) -> None:
        for s in list(src.segments):
            if s.speaker == self.speaker:
                src.drop(s, "speaker_dropped", f"speaker {self.speaker}")


def cfg_of(input_dir, out, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("curate", overrides=config_args([f"input_dir={input_dir}", f"output_dir={out}", *COMMON,
                                                        *overrides]))


def with_stage(name: str, after: str) -> str:
    stages = DEFAULT[:DEFAULT.index(after) + 1] + [name] + DEFAULT[DEFAULT.index(after) + 1:]
    return f"stages=[{','.join(stages)}]"


@pytest.fixture(scope="module")
def one_file(tmp_path_factory, conversation):
    import shutil

    root = tmp_path_factory.mktemp("stage_in")
    src, _ = conversation("c.wav", n_speakers=2, n_turns=4, seed=41, sample_rate=24000, sidecar="json")
    shutil.copy(src, root / "c.wav")
    shutil.copy(src.with_suffix(".json"), root / "c.json")
    return root


@pytest.mark.slow
def test_a_stage_added_from_config_alone_reaches_the_manifest(one_file, tmp_path):
    cfg = cfg_of(one_file, tmp_path / "out", f"+peak._target_={__name__}.PeakLevel", "+peak.floor_db=-50",
                 with_stage("peak", after="quality"))
    assert [n for n, _ in build_stages(cfg)] == ["ingest", "vad", "diarization", "segment", "quality", "peak",
                                                 "transcribe", "export"]
    # a record made without the stage is not taken for one made with it
    assert processing_fingerprint(cfg) != processing_fingerprint(cfg_of(one_file, tmp_path / "o2"))
    curate(cfg)
    rows = [json.loads(line) for line in (tmp_path / "out/manifest.jsonl").read_text().splitlines()]
    assert rows
    audio = {s["key"]: decode_flac(s["flac"])[0] for p in sorted((tmp_path / "out/shards").glob("*.tar"))
             for s in iter_shard(p)}
    for r in rows:
        want = 20 * math.log10(np.abs(audio[r["id"]]).max())
        assert abs(r["quality"]["peak_dbfs"] - want) < 0.1, (r["id"], r["quality"]["peak_dbfs"], want)
        assert "dnsmos_ovrl" in r["quality"]          # the quality stage's scores are still there
    record = json.loads(next((tmp_path / "out/parts").glob("*.json")).read_text())
    assert "peak" in record["timings"]


@pytest.mark.slow
def test_a_stage_that_drops_segments_is_obeyed(one_file, tmp_path):
    plain = cfg_of(one_file, tmp_path / "plain")
    curate(plain)
    before = [json.loads(line) for line in (tmp_path / "plain/manifest.jsonl").read_text().splitlines()]
    speaker = before[0]["speaker"]
    cfg = cfg_of(one_file, tmp_path / "out", f"+drop._target_={__name__}.DropSpeaker", f"+drop.speaker={speaker}",
                 with_stage("drop", after="segment"))
    curate(cfg)
    after = [json.loads(line) for line in (tmp_path / "out/manifest.jsonl").read_text().splitlines()]
    rejected = [json.loads(line) for line in (tmp_path / "out/rejected.jsonl").read_text().splitlines()]
    assert after and {r["id"] for r in after} == {r["id"] for r in before if r["speaker"] != speaker}
    dropped = [r for r in rejected if r["reason"] == "speaker_dropped"]
    assert dropped and all(r["stage"] == "drop" and r["speaker"] == speaker for r in dropped)
    assert {r["id"] for r in dropped} >= {r["id"] for r in before if r["speaker"] == speaker}


def test_a_stage_name_without_a_config_is_a_clear_error(tmp_path):
    cfg = cfg_of(tmp_path, tmp_path / "out", with_stage("loudness", after="quality"))
    with pytest.raises(ValueError, match=r"stages lists 'loudness'.*\+loudness="):
        build_stages(cfg)
    cfg = cfg_of(tmp_path, tmp_path / "out", "+bad._target_=builtins.dict", with_stage("bad", after="quality"))
    with pytest.raises(TypeError, match="no run\\(src\\) method"):
        build_stages(cfg)
