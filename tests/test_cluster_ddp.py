"""Two processes over gloo through Lightning (`trainer=ddp` on CPU, devices=2) with the tiny LLM:
trains, checkpoints, resumes; after every optimizer step both ranks hold bit-identical parameters
although they read different batches (gradients are all-reduced). Parameters and batches are
fingerprinted by tests/cluster_probe.py inside each rank."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster_common import TINY_LLM, llm_corpus  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent


def train(run_dir, corpus, *extra):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "PL_", "LOCAL_RANK",
                                                                     "WORLD_SIZE", "RANK", "NODE_RANK"))}
    env.update(PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "higgs_train.train", "task=llm", "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.strategy=ddp", "trainer.precision=32-true", f"run_dir={run_dir}",
           f"hydra.run.dir={run_dir}/hydra", f"data.shards={corpus / 'shards'}", f"text_tokenizer={corpus / 'tok'}",
           "checkpoint_every_n_steps=2", *TINY_LLM, "task.build._target_=cluster_probe.build",
           "+task.build.inner=higgs_train.llm.lit.build", *extra]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def probe(run_dir, rank):
    return [json.loads(line) for line in (Path(run_dir) / f"probe/rank{rank}.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_two_process_gloo_trains_in_sync_checkpoints_and_resumes(llm_corpus, tmp_path):
    run = tmp_path / "run"
    train(run, llm_corpus, "trainer.max_steps=2")
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 and ckpt["LLMDataModule"] == {"consumed": 2}
    train(run, llm_corpus, "trainer.max_steps=3", "task.optim.decay_steps=2")   # resumes from step 2
    r0, r1 = probe(run, 0), probe(run, 1)
    assert [r["step"] for r in r0] == [r["step"] for r in r1] == [1, 2, 3]
    assert all(r["world"] == 2 for r in r0 + r1)
    for a, b in zip(r0, r1):
        assert a["params"] == b["params"], a["step"]      # synchronised after every step
        assert a["batch"] != b["batch"], a["step"]        # ... from different data on each rank
    assert len({r["params"] for r in r0}) == 3            # and the parameters do move
    assert (run / "export/model.safetensors").exists()
