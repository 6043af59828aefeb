"""Shared fixtures: a synthetic speech corpus with ground truth (data_pipeline/synth.py).

synth_corpus  session-scoped; make_corpus(preset="tests") built once (~6 s) into a temp dir.
              A dict: "root" (Path), "files" [{path, truth, sample_rate, duration, n_speakers,
              speech_seconds, snr_db, music, sidecar}] with paths relative to root,
              "broken" (relative paths: broken/empty.wav, truncated.flac, random.mp3, text.wav).
              Files: conv_2spk.wav (16 kHz, json sidecar), conv_3spk.flac (24 kHz, txt sidecar),
              conv_4spk.mp3 (44.1 kHz), conv_noisy.wav (22.05 kHz, 10 dB SNR),
              conv_music.ogg (48 kHz, music), conv_aac.m4a (24 kHz), conv_opus.opus (48 kHz).
conversation  session-scoped factory: conversation(name="conv.wav", **make_conversation_kwargs)
              -> (path, utterances). Same arguments give the same cached file, so treat
              the files as read-only (copy them before changing them).
curate_inputs / curate_clean_run  session-scoped: the curation tests' input folder and the
              uninterrupted single-process run over it (tests/curate_common.py).
slurm_cluster session-scoped: a private one-node Slurm cluster (slurm/local/up.sh) for the tests
              that submit slurm/*.sbatch; skips where Slurm cannot be had.
one_thread    module-scoped: torch runs single-threaded for a module that asks for it with
              `pytestmark = pytest.mark.usefixtures("one_thread")`, and the count is restored after.
vad, diarizer session-scoped: the default SileroVAD and EmbeddingClusterDiarizer stages, loaded once.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from curate_common import make_inputs, single_run

from data_pipeline.synth import make_conversation, make_corpus


@pytest.fixture(scope="module")
def one_thread():
    # Tiny models on 2 shared cores: OpenMP hand-offs cost more than the small matmuls and convs
    # save (10-25x slower under load). Module scope, restored after: not every module wants it.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def vad():
    from data_pipeline.stages.vad import SileroVAD
    return SileroVAD()


@pytest.fixture(scope="session")
def diarizer():
    from data_pipeline.stages.diarization import EmbeddingClusterDiarizer
    return EmbeddingClusterDiarizer()


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("synth_corpus")
    summary = make_corpus(root, preset="tests", seed=0)
    summary["root"] = Path(root)
    return summary


@pytest.fixture(scope="session")
def conversation(tmp_path_factory):
    root = tmp_path_factory.mktemp("conversations")
    cache: dict = {}

    def make(name: str = "conv.wav", **kwargs):
        key = (name, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
        if key not in cache:
            path = root / f"{len(cache):03d}" / name  # own folder: equal names never collide
            path.parent.mkdir(parents=True)
            cache[key] = (path, make_conversation(path, **kwargs))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def curate_inputs(tmp_path_factory, conversation) -> Path:
    return make_inputs(tmp_path_factory.mktemp("curate_in"), conversation)


@pytest.fixture(scope="session")
def curate_clean_run(curate_inputs, tmp_path_factory) -> Path:
    return single_run(curate_inputs, tmp_path_factory.mktemp("curate_out") / "out")


ROOT = Path(__file__).resolve().parent.parent


@dataclass
class SlurmCluster:
    dir: Path
    env: dict    # for sbatch, squeue ...: SLURM_CONF, and what a job of this project needs (PYTHON, PYTHONPATH)


def slurm_missing() -> str | None:
    """Why this machine cannot run the local cluster, or None."""
    if os.geteuid() != 0:
        return "a Slurm cluster needs root here (slurmd launches jobs); run as root with slurm-wlm and munge"
    missing = [c for c in ("munged", "slurmctld", "slurmd", "sbatch")
               if not shutil.which(c, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")]
    if missing:
        return f"Slurm not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge (make setup does)"
    return None


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """One node `localhost` with 2 CPUs and 2 GPU placeholders (files, so --gpus-per-node parses and
    schedules; jobs run on CPU), its own ports and munged, under a temp folder. Torn down at the end
    of the session by slurm/local/down.sh: only the processes started here, by their pid files."""
    why = slurm_missing()
    if why:
        pytest.skip(why)
    d = tmp_path_factory.mktemp("slurm")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "MASTER_", "PL_"))
            and k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK", "NODE_RANK")}
    try:
        r = subprocess.run(["bash", str(ROOT / "slurm/local/up.sh"), str(d)], capture_output=True, text=True,
                           timeout=120, env={**base, "CPUS": "2", "GPUS": "2", "MEMORY_MB": "4096"})
        logs = "".join(p.read_text()[-2000:] for p in d.glob("*.log"))
        assert r.returncode == 0, r.stdout + r.stderr + logs
        env = {**base, "SLURM_CONF": str(d / "slurm.conf"), "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")])}
        yield SlurmCluster(d, env)
    finally:
        subprocess.run(["bash", str(ROOT / "slurm/local/down.sh"), str(d)], capture_output=True, timeout=120)
