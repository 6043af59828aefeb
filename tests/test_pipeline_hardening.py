"""Curation under passing and hostile faults: a passing fault never becomes a permanent
rejection, a header bomb is refused before decoding, a replaced input is processed again, a file
name that is not UTF-8 is accounted for like any other.

Faults are injected into real runs by FaultyIngest (the real Ingest, named by the config's
ingest._target_): a file named crash* kills its process (SIGKILL, as the OOM killer would) after
a pause that lets the other worker start a good file; a hidden .NAME.fault beside a file makes it
raise ENOSPC or MemoryError while that marker exists.
"""
from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from data_pipeline.__main__ import config_args
from data_pipeline.run import ATTEMPTS, PARTS, Progress, curate
from data_pipeline.stages.ingest import Ingest, source_key
from higgs_train.audio import AudioError
from test_pipeline_run import COMMON, ROOT, make_cfg, read_jsonl

FAULTY = ["ingest._target_=test_pipeline_hardening.FaultyIngest"]
NON_UTF8 = os.fsdecode(b"noise-\xe9.wav")  # Latin-1 e-acute: not UTF-8, held as "\udce9"


class FaultyIngest(Ingest):
    def __call__(self, path):
        path = Path(path)
        if path.name.startswith("crash"):
            time.sleep(3)  # the other worker takes its next file meanwhile: two files in flight
            os.kill(os.getpid(), signal.SIGKILL)
        fault = path.with_name(f".{path.name}.fault")
        if fault.exists():
            if fault.read_text() == "enospc":
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "/tmp/curate24-x.f32")
            raise MemoryError("injected")
        return super().__call__(path)


def _bomb(path: Path) -> Path:
    """A 3 KB WAV whose 1 Hz header declares 25 minutes."""
    sf.write(path, np.zeros(1500, np.int16), 1, subtype="PCM_16")
    return path


def file_rows(out: Path) -> dict:
    return {r["source"]: r for r in read_jsonl(out / "rejected.jsonl") if "start" not in r}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, conversation) -> Path:
    root = tmp_path_factory.mktemp("hostile_in")
    for name, sr, n_turns, seed in [("a.wav", 16000, 4, 31), ("b.flac", 44100, 3, 32)]:
        src, _ = conversation(name, n_speakers=2, n_turns=n_turns, seed=seed, sample_rate=sr, sidecar="json")
        shutil.copy(src, root / name)
        shutil.copy(src.with_suffix(".json"), (root / name).with_suffix(".json"))
    sf.write(root / "crash.wav", np.zeros(60 * 16000, np.int16), 16000)   # kills whichever process reads it
    _bomb(root / "bomb.wav")
    rng = np.random.default_rng(0)
    sf.write(os.fsencode(root / NON_UTF8), (0.1 * rng.standard_normal(3 * 16000)).astype(np.float32), 16000)
    (root / ".b.flac.fault").write_text("enospc")           # disk full while b.flac is processed
    (root / f".{NON_UTF8}.fault").write_text("memory")      # out of memory while the odd name is
    return root


@pytest.fixture(scope="module")
def first_run(hostile, tmp_path_factory) -> Path:
    """workers=2: crash.wav kills its worker while a.wav is in flight in the other one."""
    out = tmp_path_factory.mktemp("hostile_out") / "out"
    curate(make_cfg(hostile, out, "workers=2", *FAULTY))
    return out


@pytest.mark.slow
def test_a_worker_death_rejects_only_the_file_that_causes_it(first_run):
    rows = file_rows(first_run)
    assert {m["source"] for m in read_jsonl(first_run / "manifest.jsonl")} == {"a.wav"}  # not lost with crash.wav
    assert "a.wav" not in rows
    assert rows["crash.wav"]["reason"] == "worker_crashed" and "2 times" in rows["crash.wav"]["detail"]
    assert not list((first_run / ATTEMPTS).iterdir())  # every lone attempt ended or became a rejection


@pytest.mark.slow
def test_disk_full_and_out_of_memory_are_listed_and_retried(hostile, first_run, tmp_path):
    rows = file_rows(first_run)
    assert rows["b.flac"]["reason"] == "transient_error" and "No space left on device" in rows["b.flac"]["detail"]
    assert rows[NON_UTF8]["reason"] == "transient_error" and "MemoryError" in rows[NON_UTF8]["detail"]
    # the faults pass; a.wav is replaced by silence of the same length: a second run redoes these three
    out = tmp_path / "out"
    shutil.copytree(first_run, out)
    inputs = tmp_path / "in"
    shutil.copytree(hostile, inputs)  # copies keep mtimes (copy2): the other files stay done
    for p in inputs.glob(".*.fault"):
        p.unlink()
    n = sf.info(inputs / "a.wav").frames
    sf.write(inputs / "a.wav", np.zeros(n, np.int16), 16000)
    crash_record = (out / PARTS / f"{source_key('crash.wav')}.json").read_bytes()
    curate(make_cfg(inputs, out, "workers=2", *FAULTY))
    rows = file_rows(out)
    manifest = read_jsonl(out / "manifest.jsonl")
    assert {m["source"] for m in manifest} == {"b.flac"}  # the old a.wav segments are gone
    assert rows["a.wav"]["reason"] == "no_speech"
    assert rows[NON_UTF8]["reason"] not in ("transient_error", "error")
    assert not (out / PARTS / f"{source_key('a.wav')}.tar").exists()
    assert (out / PARTS / f"{source_key('crash.wav')}.json").read_bytes() == crash_record  # not retried


@pytest.mark.slow
def test_a_name_that_is_not_utf8_is_kept_losslessly(first_run):
    text = (first_run / "rejected.jsonl").read_bytes().decode("utf-8")  # still valid UTF-8
    assert "\\udce9" in text
    names = [os.fsencode(r["source"]) for r in read_jsonl(first_run / "rejected.jsonl")]
    assert b"noise-\xe9.wav" in names


@pytest.mark.slow
def test_a_header_bomb_is_rejected_before_decoding(first_run):
    row = file_rows(first_run)["bomb.wav"]
    assert row["reason"] == "unreadable" and "1500.0 s at 1 Hz" in row["detail"] and "plausible" in row["detail"]


def test_ingest_checks_declared_length_against_bytes_and_maximum(tmp_path):
    with pytest.raises(AudioError, match="not plausible"):
        Ingest()(_bomb(tmp_path / "bomb.wav"))
    sf.write(tmp_path / "long.wav", np.zeros(5 * 16000, np.int16), 16000)
    with pytest.raises(AudioError, match="more than the 4 s allowed"):
        Ingest(max_seconds=4)(tmp_path / "long.wav")
    assert Ingest(max_seconds=6)(tmp_path / "long.wav").duration == pytest.approx(5.0)


@pytest.mark.slow
def test_a_file_that_kills_the_single_process_is_rejected_after_n_runs(tmp_path):
    """workers=1: the main process dies with the file; each rerun counts it, the N+1-th rejects it."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    sf.write(inputs / "crash.wav", np.zeros(16000, np.int16), 16000)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "data_pipeline", *config_args(
        [f"input_dir={inputs}", f"output_dir={out}", *COMMON, *FAULTY, "workers=1", "max_worker_crashes=2"])]
    codes = [subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, timeout=300).returncode for _ in range(3)]
    assert codes == [-signal.SIGKILL, -signal.SIGKILL, 0]
    row = file_rows(out)["crash.wav"]
    assert row["reason"] == "worker_crashed" and "2 times" in row["detail"]


def test_progress_never_passes_its_total():
    """Three 7.8-s files (header durations) that decode a little longer, or are rejected (0 s)."""
    bar = Progress([("a", 7.8), ("b", 7.8), ("c", 7.8)], desc="t")
    bar.partial(("a", 0.95))
    bar.update({"source": "a", "seconds": 7.9, "segments": 1})
    bar.update({"source": "b", "seconds": 7.9, "segments": 1})
    assert bar.bar.n <= bar.bar.total
    bar.update({"source": "c", "seconds": 0.0, "segments": 0})
    assert bar.bar.n == pytest.approx(bar.bar.total, abs=1e-6) and bar.bar.n <= bar.bar.total
    bar.close()


def _workers(pid: int) -> list:
    import psutil

    try:  # the pool's spawned workers (not multiprocessing's resource tracker)
        return [c for c in psutil.Process(pid).children(recursive=True) if "spawn_main" in " ".join(c.cmdline())]
    except psutil.Error:
        return []


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_workers_do_not_outlive_the_main_process(tmp_path, sig):
    """The main process is killed (SIGKILL: the workers get the kernel's parent-death signal) or
    terminated (SIGTERM: it kills the pool and exits 143) while its workers start up."""
    import psutil

    inputs = tmp_path / "in"
    inputs.mkdir()
    for i in range(2):
        sf.write(inputs / f"s{i}.wav", np.zeros(30 * 16000, np.int16), 16000)
    proc = subprocess.Popen([sys.executable, "-m", "data_pipeline", *config_args(
        [f"input_dir={inputs}", f"output_dir={tmp_path / 'out'}", *COMMON, "workers=2"])],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, workers = time.time() + 120, []
    while len(workers) < 2 and time.time() < deadline and proc.poll() is None:
        workers = _workers(proc.pid)
        time.sleep(0.05)
    assert len(workers) == 2
    proc.send_signal(sig)
    assert proc.wait(timeout=60) == (-signal.SIGKILL if sig == signal.SIGKILL else 128 + signal.SIGTERM)
    gone, alive = psutil.wait_procs(workers, timeout=60)
    assert not alive, [p.pid for p in alive]


def test_output_dir_equal_to_input_dir_is_refused_before_any_work(tmp_path):
    sf.write(tmp_path / "x.wav", np.zeros(16000, np.int16), 16000)
    with pytest.raises(ValueError, match="output_dir is input_dir"):
        curate(make_cfg(tmp_path, tmp_path))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.wav"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux) to drop root's DAC override")
def test_unlistable_folders_and_odd_files_get_their_reasons(tmp_path):
    """Run without the capabilities that let root read anything (setpriv), so modes bite: a folder
    that cannot be listed, a file that cannot be read, a FIFO, a symlink loop, a broken link."""
    inputs = tmp_path / "in"
    (inputs / "locked").mkdir(parents=True)
    sf.write(inputs / "locked/hidden.wav", np.zeros(16000, np.int16), 16000)
    sf.write(inputs / "secret.wav", np.zeros(16000, np.int16), 16000)
    os.mkfifo(inputs / "pipe.wav")
    os.symlink("loop.wav", inputs / "loop.wav")
    os.symlink("gone.wav", inputs / "dangling.wav")
    (inputs / "locked").chmod(0)
    (inputs / "secret.wav").chmod(0)
    out = tmp_path / "out"
    try:
        proc = subprocess.run(["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-all",
                               sys.executable, "-m", "data_pipeline", *config_args(
                                   [f"input_dir={inputs}", f"output_dir={out}", *COMMON, "workers=1"])],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        (inputs / "locked").chmod(0o755)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = file_rows(out)
    assert sorted(rows) == ["dangling.wav", "locked/", "loop.wav", "pipe.wav", "secret.wav"]
    assert rows["locked/"]["reason"] == "unreadable_folder" and "Permission denied" in rows["locked/"]["detail"]
    assert rows["secret.wav"]["reason"] == "transient_error" and "Permission denied" in rows["secret.wav"]["detail"]
    assert rows["pipe.wav"]["detail"] == "not a regular file (a FIFO)"
    assert rows["loop.wav"]["detail"] == "symbolic link loop"
    assert rows["dangling.wav"]["detail"] == "broken symbolic link (its target does not exist)"


def test_a_latin1_sidecar_is_read_as_latin1_not_mojibake(tmp_path):
    from data_pipeline.stages.transcribe import read_sidecar

    (tmp_path / "a.txt").write_bytes("Ein Caf\u00e9, bitte: \u00fcber \u00e4rger".encode("latin-1"))
    assert read_sidecar(tmp_path / "a.txt")[1] == "Ein Caf\u00e9, bitte: \u00fcber \u00e4rger"
    (tmp_path / "b.json").write_bytes('\ufeff{"text": "na\u00efve"}'.encode("utf-8"))  # UTF-8 with a BOM
    assert read_sidecar(tmp_path / "b.json")[1] == "na\u00efve"


def test_a_full_disk_in_the_report_names_the_path_and_leaves_no_temp(tmp_path):
    """/dev/full answers every write with ENOSPC: a clip written through a link to it, a manifest
    row that cannot be written, a report that fails half-way leave no temp file or folder."""
    from data_pipeline.merge import _write_jsonl
    from data_pipeline.report import _write_clip, write_report

    link = tmp_path / f".clip.mp3.{os.getpid()}.tmp"   # higgs_train.files.atomic_path's temp name
    link.symlink_to("/dev/full")
    with pytest.raises(OSError) as e:
        _write_clip(np.zeros(16000, np.float32), tmp_path / "clip.mp3")
    assert e.value.errno == errno.ENOSPC and str(link) in str(e.value)
    assert not (tmp_path / "clip.mp3").exists() and not link.is_symlink()
    with pytest.raises(TypeError):
        _write_jsonl(tmp_path / "manifest.jsonl", [{"a": 1}, {"b": object()}])
    with pytest.raises(KeyError):
        write_report(tmp_path, [{"source": "a.wav"}], [], {})  # a row without its fields
    assert sorted(p.name for p in tmp_path.iterdir()) == [], list(tmp_path.iterdir())


@pytest.mark.slow
def test_a_stopped_run_does_not_count_as_a_crash(tmp_path):
    """SIGTERM while the single process is on a file: exit 143, and the lone attempt is not
    counted against the file (only a death of the process is)."""
    inputs = tmp_path / "in"
    inputs.mkdir()
    sf.write(inputs / "crash.wav", np.zeros(16000, np.int16), 16000)  # sleeps 3 s before it kills
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "data_pipeline", *config_args(
        [f"input_dir={inputs}", f"output_dir={out}", *COMMON, *FAULTY, "workers=1"])],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    marker = out / ATTEMPTS / source_key("crash.wav")
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert marker.read_text() == "1"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM
    assert not marker.exists()
