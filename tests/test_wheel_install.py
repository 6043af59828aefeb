"""A wheel install works outside the repo: each package carries its own config groups.

Builds a wheel of this tree, installs it (no deps: the test venv's packages serve) into a fresh
folder put first on sys.path, and from a directory outside the repo runs the entry points'
--help and a tiny curation. Before configs shipped in the package, every entry point failed to
compose its config there ("Primary config directory not found")."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from run_as_main import run_as_main  # tests/ is on sys.path

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\n")
    for f in filter(None, files):
        p = REPO / f
        if p.is_symlink() or p.is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            if p.is_symlink():
                os.symlink(os.readlink(p), src / f)
            else:
                shutil.copy2(p, src / f)
    run = dict(check=True, capture_output=True, text=True)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp / "dist"), str(src)], **run)
    [wheel] = (tmp / "dist").glob("higgs_train-*.whl")
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp / "site"),
                    str(wheel)], **run)
    env = {**os.environ, "PYTHONPATH": str(tmp / "site"), "OMP_NUM_THREADS": "1"}
    work = tmp / "elsewhere"
    work.mkdir()
    return {"env": env, "cwd": work, "site": tmp / "site"}


def py(installed, *args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=installed["cwd"], env=installed["env"],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_entry_points_compose_their_configs_from_the_wheel(installed):
    r = py(installed, "-c", "from higgs_train.config import package_configs as c;"
                            "import higgs_train.llm.prompt;"   # reads its chat template, a package data file
                            "print(*(c(p) for p in ('higgs_train', 'data_pipeline', 'inference', 'recipes')))")
    assert r.returncode == 0, r.stderr
    dirs = [Path(d) for d in r.stdout.split()]
    assert all(str(d).startswith(str(installed["site"])) and not d.is_symlink() for d in dirs)
    # each package carries the groups it owns and no other's
    owned = ("train.yaml", "curate.yaml", "inference/infer.yaml", "recipes/finetune.yaml")
    assert [[(d / f).is_file() for f in owned] for d in dirs] == [[i == j for j in range(4)] for i in range(4)]
    # every entry point, and in the recipes groups of two packages joined by hydra.searchpath
    helps = (("data_pipeline", "vad"), ("data_pipeline.merge", "output_dir"), ("data_pipeline.tokenize", "batch_size"),
             ("higgs_train.train", "task"), ("higgs_train.convert", "to"), ("inference", "text"),
             ("inference.server", "max_batch"), ("recipes.finetune", "voice_dir"), ("recipes.evaluate", "eval_set"),
             ("recipes.train", "eval_set"))
    # one interpreter for all of them (tests/run_as_main.py), started like py() starts one
    runs = run_as_main([(mod, ["--help"]) for mod, _ in helps], cwd=installed["cwd"], env=installed["env"])
    for (mod, needle), r in zip(helps, runs):
        assert r.returncode == 0 and needle in r.stdout, (mod, r.stderr[-500:])
    finetune = runs[7].stdout
    assert "lr: 0.0002" in finetune and "gradient_checkpointing: true" in finetune and "trainer:" in finetune


@pytest.mark.slow
def test_a_tiny_curation_runs_from_the_wheel(installed, tmp_path):
    import numpy as np
    import soundfile as sf

    from data_pipeline.synth import tts

    inp = tmp_path / "in"
    inp.mkdir()
    wav = tts("The installed package curates this folder, far away from the repository it came from.")
    pad = np.zeros(12000, np.float32)
    sf.write(inp / "clip.wav", np.concatenate([pad, wav, pad]), 24000)
    out = tmp_path / "out"
    r = py(installed, "-m", "data_pipeline", f"input_dir={inp}", f"output_dir={out}", "transcribe=none",
           "workers=1", "filter.min.dnsmos_ovrl=1.0")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = (out / "manifest.jsonl").read_text().splitlines()
    assert len(rows) == 1 and list((out / "shards").glob("shard-*.tar"))
