"""Shared by the curation tests (tests/test_pipeline_run.py, tests/test_cluster_slurm.py): one small
input folder and the uninterrupted single-process run over it, each built once per session by the
fixtures `curate_inputs` and `curate_clean_run` in tests/conftest.py.

The input folder: 2 short conversations, 2 duplicates, the 4 broken files; the runs use the real
stages (Silero VAD, resemblyzer diarization, DNSMOS, sidecar transcripts). It is kept small because
DNSMOS dominates the time. DNSMOS scores espeak-ng speech around 2.1-2.9 OVRL, so the runs use a
floor of 2.0.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import soundfile as sf

from data_pipeline.__main__ import config_args
from data_pipeline.synth import make_broken_files

ROOT = Path(__file__).resolve().parent.parent
GOOD = ["a.wav", "sub/b.flac"]
DUPLICATES = ["dup/a_copy.wav", "dup/a_same_pcm.flac"]
BROKEN = ["broken/empty.wav", "broken/random.mp3", "broken/text.wav", "broken/truncated.flac"]
# Small shards so a run writes several; one DNSMOS window per clip (the scores only feed thresholds here).
COMMON = ["filter.min.dnsmos_ovrl=2.0", "quality.metrics.dnsmos.hop_seconds=9.01", "export.max_shard_bytes=300000",
          "transcribe=sidecar"]


def make_inputs(root: Path, conversation) -> Path:
    for name, sr, n_spk, n_turns, seed in [("a.wav", 16000, 2, 4, 31), ("sub/b.flac", 44100, 2, 3, 32)]:
        src, _ = conversation(Path(name).name, n_speakers=n_spk, n_turns=n_turns, seed=seed, sample_rate=sr,
                              sidecar="json")
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, root / name)
        shutil.copy(src.with_suffix(".json"), (root / name).with_suffix(".json"))
    (root / "dup").mkdir()
    shutil.copy(root / "a.wav", root / "dup/a_copy.wav")                      # the same file copied
    pcm, sr = sf.read(root / "a.wav", dtype="int16")
    sf.write(root / "dup/a_same_pcm.flac", pcm, sr, subtype="PCM_16")         # same audio, other container
    make_broken_files(root / "broken")
    return root


def single_run(inputs: Path, out: Path) -> Path:
    """The command a user types, with 2 worker processes; broken inputs must not make it fail."""
    proc = subprocess.run([sys.executable, "-m", "data_pipeline", *config_args(
        [f"input_dir={inputs}", f"output_dir={out}", *COMMON, "workers=2"])], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "files 8/8" in proc.stderr  # the progress bar
    return out
