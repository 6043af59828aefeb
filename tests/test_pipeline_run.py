"""The curation run end to end: every input accounted for, broken files and duplicates rejected,
shards that load, resume after SIGKILL, cluster slices + merge, re-thresholding without recompute.

All runs share one small input folder and compare with one uninterrupted run over it, both built
once per session (tests/curate_common.py, fixtures in tests/conftest.py).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from curate_common import BROKEN, COMMON, DUPLICATES, GOOD
from data_pipeline.__main__ import config_args
from data_pipeline.merge import complete_slices, finalize
from data_pipeline.run import PARTS, curate, slice_sources
from data_pipeline.stages.ingest import source_key
from data_pipeline.config import CONFIG_DIR
from higgs_train.shards import decode_flac, iter_shard

ROOT = Path(__file__).resolve().parent.parent
MANIFEST_FIELDS = ["id", "source", "start", "end", "duration", "speaker", "text", "language", "quality", "shard"]


def make_cfg(input_dir, output_dir, *overrides):
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("curate", overrides=config_args(
            [f"input_dir={input_dir}", f"output_dir={output_dir}", *COMMON, *overrides]))


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.slow
def test_every_input_is_processed_or_rejected(curate_inputs, curate_clean_run):
    manifest, rejected = read_jsonl(curate_clean_run / "manifest.jsonl"), read_jsonl(curate_clean_run / "rejected.jsonl")
    file_rejects = {r["source"]: r for r in rejected if "start" not in r}
    assert sorted(file_rejects) == sorted(BROKEN + DUPLICATES)
    for rel in BROKEN:
        assert file_rejects[rel]["stage"] == "ingest" and file_rejects[rel]["reason"] == "unreadable"
        assert len(file_rejects[rel]["detail"]) > 5
    for rel in DUPLICATES:
        assert file_rejects[rel]["reason"] == "duplicate" and file_rejects[rel]["detail"] == "same audio as a.wav"
    # every good file gave kept segments, and its rejected segments carry reasons and times
    assert sorted({m["source"] for m in manifest}) == GOOD
    for r in rejected:
        if "start" in r:
            assert r["source"] in GOOD and r["reason"] and r["end"] > r["start"] and r["speaker"]
    summary = json.loads((curate_clean_run / "report/summary.json").read_text())
    assert summary["sources"] == 8 and summary["files_rejected"] == 6
    assert summary["segments_kept"] == len(manifest)
    assert abs(summary["hours_kept"] * 3600 - sum(m["duration"] for m in manifest)) < 1.0
    assert set(summary["timings"]) >= {"ingest", "vad", "diarization", "segment", "quality", "transcribe", "export"}
    assert summary["real_time_factor"] > 0 and (curate_clean_run / "report/index.html").is_file()


@pytest.mark.slow
def test_manifest_rows(curate_inputs, curate_clean_run):
    manifest = read_jsonl(curate_clean_run / "manifest.jsonl")
    assert len(manifest) >= 4
    for m in manifest:
        assert list(m) == MANIFEST_FIELDS
        assert 3.0 <= m["duration"] <= 30.0 and abs(m["end"] - m["start"] - m["duration"]) < 1e-3
        assert m["speaker"].startswith("S") and m["quality"]["dnsmos_ovrl"] >= 2.0
        assert {"dnsmos_ovrl", "snr_db", "clipping", "bandwidth_hz", "loudness_lufs"} <= set(m["quality"])
        assert len(m["text"]) >= 2 and m["language"]
    # speakers are labelled per source; ids are unique
    assert len({m["id"] for m in manifest}) == len(manifest)
    assert {m["speaker"] for m in manifest if m["source"] == "a.wav"} == {"S0", "S1"}


@pytest.mark.slow
def test_shards_hold_every_row_once_and_load(curate_clean_run):
    manifest = {m["id"]: m for m in read_jsonl(curate_clean_run / "manifest.jsonl")}
    shards = sorted((curate_clean_run / "shards").glob("*.tar"))
    assert len(shards) >= 2 and all(p.name.startswith("shard-") for p in shards)
    assert not [p for p in (curate_clean_run / "shards").iterdir() if p.suffix != ".tar"]  # no temp files
    seen: dict[str, str] = {}
    for p in shards:
        for s in iter_shard(p):
            assert s["key"] not in seen
            seen[s["key"]] = f"shards/{p.name}"
            assert s["row"] == manifest[s["key"]]
            wav, sr = decode_flac(s["flac"])
            assert sr == 24000 and abs(len(wav) / sr - s["row"]["duration"]) <= 0.02
    assert seen == {k: m["shard"] for k, m in manifest.items()}

    import webdataset as wds

    keys = []
    for sample in wds.WebDataset([str(p) for p in shards], shardshuffle=False):
        assert json.loads(sample["json"])["id"] == sample["__key__"]
        assert decode_flac(sample["flac"])[1] == 24000
        keys.append(sample["__key__"])
    assert sorted(keys) == sorted(manifest)

    from datasets import load_dataset

    ds = load_dataset("webdataset", data_files={"train": [str(p) for p in shards]}, split="train")
    assert len(ds) == len(manifest)
    row = ds[0]
    assert row["json"]["id"] == row["__key__"] and row["flac"]["sampling_rate"] == 24000


@pytest.mark.slow
def test_killed_slice_resumed_then_merged_equals_the_single_run(curate_inputs, curate_clean_run, tmp_path):
    """Cluster mode and resume at once: slice 0 of 2 is SIGKILLed mid-way and rerun, slice 1 runs,
    `python -m data_pipeline.merge` combines them: manifest, rejected and shard bytes equal the
    uninterrupted single run's."""
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="no complete set of slices"):
        complete_slices(out)
    args = [f"input_dir={curate_inputs}", f"output_dir={out}", *COMMON, "workers=1", "num_shards=2", "shard_index=0"]
    proc = subprocess.Popen([sys.executable, "-m", "data_pipeline", *config_args(args)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.time() + 120
    try:  # kill the whole process group as soon as the slice's conversation is done
        while time.time() < deadline and proc.poll() is None:
            if any(p.stat().st_size > 1000 for p in out.glob(f"{PARTS}/*.json")):  # a record with segments
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    done_before = {p.name: p.stat().st_mtime_ns for p in (out / PARTS).glob("*.json")}
    assert 1 <= len(done_before) < 4  # slice 0 holds 4 of the 8 curate_inputs
    assert not list(out.glob("slices/*.json")) and not (out / "manifest.jsonl").exists()

    for i in range(2):
        summary = curate(make_cfg(curate_inputs, out, "workers=1", "num_shards=2", f"shard_index={i}"))
        assert summary["shard_index"] == i and not (out / "manifest.jsonl").exists()
    # finished sources were not redone
    assert all((out / PARTS / n).stat().st_mtime_ns == t for n, t in done_before.items())
    subprocess.run([sys.executable, "-m", "data_pipeline.merge", *config_args([f"output_dir={out}", *COMMON])],
                   cwd=ROOT, check=True, capture_output=True)
    assert (out / "manifest.jsonl").read_text() == (curate_clean_run / "manifest.jsonl").read_text()
    assert (out / "rejected.jsonl").read_text() == (curate_clean_run / "rejected.jsonl").read_text()
    shards = sorted(p.name for p in (curate_clean_run / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards
    assert all((out / "shards" / n).read_bytes() == (curate_clean_run / "shards" / n).read_bytes() for n in shards)
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or ".tmp." in p.name]
    assert not leftovers, leftovers


def test_slices_are_disjoint_and_deterministic():
    files = [f"d{i % 7}/f{i:03d}.wav" for i in range(100)]
    slices = [slice_sources(list(reversed(files)), 4, i) for i in range(4)]
    assert sorted(sum(slices, [])) == sorted(files)
    assert all(not set(a) & set(b) for i, a in enumerate(slices) for b in slices[i + 1:])
    assert slices == [slice_sources(files, 4, i) for i in range(4)]
    assert max(map(len, slices)) - min(map(len, slices)) <= 1
    with pytest.raises(ValueError):
        slice_sources(files, 4, 4)


@pytest.mark.slow
def test_rerun_resumes_and_rethresholds_without_recompute(curate_inputs, curate_clean_run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(curate_clean_run, out)
    before = {p.name: p.stat().st_mtime_ns for p in (out / PARTS).iterdir()}
    base = read_jsonl(out / "manifest.jsonl")
    # other thresholds: only the finalize step runs, from the stored scores (no part is rewritten)
    thr = sorted(m["quality"]["dnsmos_ovrl"] for m in base)[len(base) // 2]  # keeps about half
    finalize(make_cfg(curate_inputs, out, f"filter.min.dnsmos_ovrl={thr}"), out, *complete_slices(out))
    assert {p.name: p.stat().st_mtime_ns for p in (out / PARTS).iterdir()} == before
    strict = read_jsonl(out / "manifest.jsonl")
    assert [m["id"] for m in strict] == [m["id"] for m in base if m["quality"]["dnsmos_ovrl"] >= thr]
    assert 0 < len(strict) < len(base)
    low = [r for r in read_jsonl(out / "rejected.jsonl") if r["reason"] == "low_dnsmos_ovrl"]
    assert len(low) >= len(base) - len(strict)
    # a run stopped before it finished: two sources without a record, no manifest, no shards, and
    # the temp files a writer killed mid-write leaves (a claim, a record, a part)
    key = source_key("dup/a_copy.wav")
    claim = out / ".sha1" / json.loads((out / PARTS / f"{key}.json").read_text())["sha1"] / key
    stale = [claim.with_name(f".{key}.99999.tmp"), out / PARTS / f".{key}.json.99999.tmp",
             out / PARTS / f".{key}.tar.99999.tmp"]
    for p in stale:
        p.write_text("half")
    for rel in ["dup/a_copy.wav", "broken/empty.wav"]:
        (out / PARTS / f"{source_key(rel)}.json").unlink()
    shutil.rmtree(out / "shards")
    (out / "manifest.jsonl").unlink()
    curate(make_cfg(curate_inputs, out, "workers=1"))  # the original thresholds again
    assert (out / "manifest.jsonl").read_text() == (curate_clean_run / "manifest.jsonl").read_text()
    assert (out / "rejected.jsonl").read_text() == (curate_clean_run / "rejected.jsonl").read_text()
    after = {p.name: p.stat().st_mtime_ns for p in (out / PARTS).iterdir()}
    redone = sorted(n for n in after if after[n] != before.get(n))
    assert redone == sorted(f"{source_key(r)}.json" for r in ["dup/a_copy.wav", "broken/empty.wav"])
    assert [p for p in stale if p.exists()] == []


@pytest.mark.slow
def test_tokenizer_hook_adds_codes_after_export(curate_inputs, curate_clean_run, tmp_path):
    import torch

    from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig

    torch.manual_seed(0)
    from higgs_train.config import model_size

    tok = AudioTokenizer(TokenizerConfig(**model_size("tokenizer", "tiny")))
    tok.eval().save_pretrained(tmp_path / "tok")
    out = tmp_path / "out"
    shutil.copytree(curate_clean_run, out)
    finalize(make_cfg(curate_inputs, out, f"tokenizer={tmp_path / 'tok'}"), out, *complete_slices(out))
    rows = {m["id"]: m for m in read_jsonl(out / "manifest.jsonl")}
    n = 0
    for p in sorted((out / "shards").glob("*.tar")):
        for s in iter_shard(p):
            assert s["codes"] is not None and s["codes"].shape[0] == 8
            assert abs(s["codes"].shape[1] - rows[s["key"]]["duration"] * 25) <= 1  # 25 frames/s
            n += 1
    assert n == len(rows)


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_file_retried(curate_inputs, curate_clean_run, tmp_path):
    """A worker process dies (SIGKILL, as the kernel's OOM killer would) while files are in flight:
    the pool is rebuilt, those files are retried, and the result equals the undisturbed run's."""
    import psutil

    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "data_pipeline", *config_args(
        [f"input_dir={curate_inputs}", f"output_dir={out}", *COMMON, "workers=2"])],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # Hydra logs to stdout
    killed = None
    deadline = time.time() + 120
    while killed is None and time.time() < deadline and proc.poll() is None:
        try:  # the pool's spawned workers (not multiprocessing's resource tracker)
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True)
                       if "spawn_main" in " ".join(c.cmdline())]
        except psutil.Error:
            workers = []
        if workers:  # the first file cannot be done yet: workers start by loading four models
            killed = workers[0].pid
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    err, _ = proc.communicate(timeout=600)
    assert killed is not None, err[-2000:]
    assert proc.returncode == 0, err[-3000:]
    assert "a worker process died; restarting the pool" in err
    assert (out / "manifest.jsonl").read_text() == (curate_clean_run / "manifest.jsonl").read_text()
    assert (out / "rejected.jsonl").read_text() == (curate_clean_run / "rejected.jsonl").read_text()


def test_progress_moves_inside_a_source_and_ends_at_its_duration(curate_inputs, tmp_path, monkeypatch):
    """A long source reports the fraction done after each stage and each quality chunk, so the
    bar moves while it runs; the bar ends at the total audio, whatever order reports arrive in."""
    import data_pipeline.run as run
    import data_pipeline.source as source

    monkeypatch.setattr(source, "CHUNK_SECONDS", 4.0)  # several quality chunks in a 20-s conversation
    cfg = make_cfg(curate_inputs, tmp_path / "out", "workers=1")
    reports = []
    ctx = run.Context(Path(curate_inputs), tmp_path / "out", run.processing_fingerprint(cfg), progress=reports.append)
    (tmp_path / "out" / PARTS).mkdir(parents=True)
    stages = run.build_stages(cfg)
    summary = run.process_source("a.wav", stages, ctx)
    fractions = [f for rel, f in reports]
    assert all(rel == "a.wav" for rel, _ in reports)
    assert fractions == sorted(fractions) and fractions[0] <= 0.05 and abs(fractions[-1] - 1.0) < 1e-9
    # the quality stage's share of the bar, from the stages' costs: it moves chunk by chunk inside it
    costs = {name: s.cost for name, s in stages}
    lo = sum(costs[n] for n in ("ingest", "vad", "diarization", "segment")) / sum(costs.values())
    hi = lo + costs["quality"] / sum(costs.values())
    assert len([f for f in fractions if lo + 1e-9 < f < hi - 1e-9]) >= 2, (fractions, lo, hi)

    bar = run.Progress([("a.wav", summary["seconds"]), ("b.wav", 30.0)], desc="t")
    for r in reports:
        bar.partial(r)
    assert bar.bar.n == pytest.approx(summary["seconds"] / 3600, abs=1e-5)
    bar.update(summary)
    bar.partial(("a.wav", 0.5))  # late report of a finished source: ignored
    bar.update({"source": "b.wav", "seconds": 30.0, "segments": 1})
    assert bar.bar.n == pytest.approx((summary["seconds"] + 30.0) / 3600, abs=1e-5)
    bar.close()


def test_fingerprint_ignores_how_stages_run_not_what_they_compute(tmp_path):
    from data_pipeline.run import processing_fingerprint

    base = processing_fingerprint(make_cfg(tmp_path, tmp_path / "o"))
    assert processing_fingerprint(make_cfg(tmp_path, tmp_path / "o", "quality.metrics.dnsmos.batch_size=16",
                                           "quality.metrics.dnsmos.threads=4", "diarization.device=cuda")) == base
    assert processing_fingerprint(make_cfg(tmp_path, tmp_path / "o", "quality.metrics.dnsmos.hop_seconds=1.0")) != base
    assert processing_fingerprint(make_cfg(tmp_path, tmp_path / "o", "vad.threshold=0.6")) != base
