"""Every core busy whatever the file lengths, none oversubscribed: a curation worker's threads are the
machine's cores shared among the sources still under way (data_pipeline/cores.py), so the last
long file takes the cores of the workers that ran out of files, and at no instant do the busy
workers hold more threads than there are cores. The report says how many cores each stage used.

A real run (curate, worker processes) whose stage list is the real ingest and two ThreadProbe
stages that log, every 20 ms, the share the worker may use, and the torch threads the run set.
"""
from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_pipeline import cores
from data_pipeline.report import summarize
from data_pipeline.run import curate
from test_pipeline_run import make_cfg

PROBES = ["probe", "probe_again"]


class ThreadProbe:
    """Idles (asleep) `seconds_per_second` x the source's duration, logging (time, share, torch threads)."""

    def __init__(self, log_dir: str, seconds_per_second: float = 0.4):
        self.log_dir = Path(log_dir)
        self.seconds_per_second = seconds_per_second

    def run(self, src) -> None:
        import torch

        t0, rows = time.time(), []
        while True:
            t = time.time()
            rows.append({"t": t, "share": cores.share(), "torch": torch.get_num_threads(), "source": src.rel})
            if t - t0 >= self.seconds_per_second * src.audio.duration:
                break
            time.sleep(0.02)
        with open(self.log_dir / f"{src.stage}-{os.getpid()}.jsonl", "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    """One 5-s file and two 1-s files, workers = cores (at most 4, so that the run stays short)."""
    root = tmp_path_factory.mktemp("cores")
    inputs, logs = root / "in", root / "logs"
    inputs.mkdir()
    logs.mkdir()
    rng = np.random.default_rng(0)
    for name, seconds in [("long.wav", 5.0), ("short1.wav", 1.0), ("short2.wav", 1.0)]:
        sf.write(inputs / name, (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32), 16000)
    workers = min(cores.cores(), 4)
    probes = [f"+{p}._target_=test_pipeline_cores.ThreadProbe" for p in PROBES] + [f"+{p}.log_dir={logs}" for p in PROBES]
    summary = curate(make_cfg(inputs, root / "out", f"workers={workers}", f"stages=[ingest,{','.join(PROBES)}]",
                              *probes))
    rows = [json.loads(line) for p in sorted(logs.glob("*.jsonl")) for line in p.read_text().splitlines()]
    return rows, workers, summary, (root / "out/report/index.html").read_text()


@pytest.mark.skipif(cores.cores() < 2, reason="one core: nothing to share")
def test_busy_workers_never_hold_more_threads_than_cores_and_the_last_file_takes_them_all(probed_run):
    rows, workers, _, _ = probed_run
    n = cores.cores()
    spans = {}  # source -> (first, last) logged time: when a worker was busy with it
    for r in rows:
        a, b = spans.get(r["source"], (r["t"], r["t"]))
        spans[r["source"]] = (min(a, r["t"]), max(b, r["t"]))
    assert set(spans) == {"long.wav", "short1.wav", "short2.wav"}
    for r in rows:  # the thread rule, at every logged instant: busy workers x threads each <= cores
        busy = sum(a <= r["t"] <= b for a, b in spans.values())
        assert busy * r["share"] <= n and busy * r["torch"] <= n, (r, busy)
    # while three sources were unfinished every worker had cores // workers; the long file's
    # tail, alone, had every core, for its DNSMOS calls and (from its next stage on) for torch
    long_rows = [r for r in rows if r["source"] == "long.wav"]
    shorts_end = max(spans["short1.wav"][1], spans["short2.wav"][1])
    assert min(r["share"] for r in long_rows) == n // workers
    alone = [r for r in long_rows if r["t"] > shorts_end + 0.5]
    assert alone and all(r["share"] == n for r in alone)
    assert any(r["torch"] == n for r in alone)


def test_report_says_how_many_cores_each_stage_used(probed_run):
    _, _, summary, html = probed_run
    # the probes sleep: a fraction of a core; the whole run's CPU over its wall, of this machine's cores
    assert set(summary["stage_cores"]) >= {"ingest", *PROBES}
    assert all(summary["stage_cores"][p] < 0.3 for p in PROBES)
    assert summary["cores"] == cores.cores() and 0 <= summary["cores_busy"] < 0.5
    assert f"{summary['cores_busy']:.2f} of {cores.cores()} cores busy" in html
    assert f"<td class='n'>{summary['stage_cores']['probe']}</td>" in html
    s = summarize([], [], {"timings": {"quality": 10.0, "vad": 2.0, "finalize": 1.0},
                           "cpu_timings": {"quality": 19.0, "vad": 1.0}, "wall_seconds": 8.0})
    assert s["stage_cores"] == {"quality": 1.9, "vad": 0.5} and s["cores_busy"] == 2.5


@pytest.mark.skipif(cores.cores() < 2, reason="one core: nothing side by side")
def test_side_by_side_runs_the_share_at_once_and_keeps_the_order():
    running, most, lock = 0, 0, threading.Lock()

    def work(i: int) -> int:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return i * i

    t = time.perf_counter()
    assert list(cores.side_by_side(work, range(12))) == [i * i for i in range(12)]
    assert most == cores.share() == cores.cores()  # outside a pool the share is every core
    assert time.perf_counter() - t < 12 * 0.05 * 0.8  # side by side, not one after the other
