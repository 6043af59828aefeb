"""README.md's "Higgs TTS 3" section runs as written on the tiny release directory: its CLI and
convert commands in one interpreter (tests/run_as_main.py), then its server command as a process of
its own, spoken to through the real openai client."""
from __future__ import annotations

import io
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
from safetensors.torch import load_file

from run_as_main import run_as_main   # tests/ is on sys.path
from server_common import free_port

REPO = Path(__file__).resolve().parent.parent


def section_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Higgs TTS 3\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [shlex.split(line) for line in block.splitlines() if line.startswith("python -m ")]


@pytest.fixture
def workdir(tmp_path):
    """A fresh working directory where the section's relative paths resolve (tests/ linked in)."""
    (tmp_path / "tests").symlink_to(REPO / "tests")
    return tmp_path


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
            "OMP_NUM_THREADS": "1"}


@pytest.mark.slow
def test_readme_section_runs_as_written(workdir):
    cmds = section_commands()
    assert [c[2] for c in cmds] == ["inference", "inference", "higgs_train.convert", "higgs_train.convert",
                                    "inference.server"]
    runs = run_as_main([(c[2], c[3:]) for c in cmds[:4]], cwd=workdir, env=env())
    for c, r in zip(cmds, runs):
        assert r.returncode == 0, (c, r.stderr[-2000:])
    for name in ("v3.wav", "v3_clone.wav"):
        wav, sr = sf.read(workdir / name)
        assert sr == 24000 and len(wav) >= 960 and np.abs(wav).max() > 1e-4
    a = load_file(str(REPO / "tests/fixtures/release_v3/tiny/model.safetensors"))
    b = load_file(str(workdir / "v3_release" / "model.safetensors"))
    assert set(a) == set(b) and all(a[k].equal(b[k]) for k in a)          # the round trip is bit-equal

    import openai

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", *cmds[4][2:], f"port={port}", "sampling.max_frames=20"],
                              cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(1200):
            assert server.poll() is None, server.stdout.read()[-2000:]
            try:
                httpx.get(url + "/health", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        got = client.audio.speech.create(model="higgs-audio", voice="alloy", input="Hello there.",
                                         extra_body={"seed": 1}, timeout=120)
        wav, sr = sf.read(io.BytesIO(got.content))
        assert sr == 24000 and 960 <= len(wav) <= 20 * 960
    finally:
        server.terminate()
        server.wait(timeout=30)
