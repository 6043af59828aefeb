"""Two processes over gloo through Lightning (`trainer=ddp` on CPU, devices=2) with the tiny LLM
and the tiny tokenizer (a GAN: two optimizers, manual optimization, EMA codebooks): trains,
checkpoints, resumes; after every step both ranks hold bit-identical parameters and codebooks
although they read different batches (gradients and EMA statistics are all-reduced). Parameters
and batches are fingerprinted by tests/cluster_probe.py inside each rank."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cluster_common import MICRO_LLM, MICRO_TOKENIZER, llm_corpus, tokenizer_corpus  # noqa: F401  (fixtures)
from cluster_probe import sha1
from higgs_train.tokenizer import AudioTokenizer

ROOT = Path(__file__).resolve().parent.parent


def launch(run_dir, task, inner, *overrides):
    """`python -m higgs_train.train task=TASK trainer=ddp` on 2 CPU processes, probed by cluster_probe."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "PL_", "LOCAL_RANK",
                                                                     "WORLD_SIZE", "RANK", "NODE_RANK"))}
    env.update(PYTHONPATH=str(ROOT / "tests"), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "higgs_train.train", f"task={task}", "trainer=ddp", "trainer.accelerator=cpu",
           "trainer.devices=2", "trainer.precision=32-true", f"run_dir={run_dir}", f"hydra.run.dir={run_dir}/hydra",
           "task.build._target_=cluster_probe.build", f"+task.build.inner={inner}", *overrides]
    r = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


def train(run_dir, corpus, *extra):
    launch(run_dir, "llm", "higgs_train.llm.lit.build", "trainer.strategy=ddp", f"data.shards={corpus / 'shards'}",
           f"text_tokenizer={corpus / 'tok'}", "checkpoint_every_n_steps=2", *MICRO_LLM, *extra)


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


@pytest.mark.slow
def test_two_process_gloo_tokenizer_gan_in_sync_checkpoints_and_resumes(tokenizer_corpus, tmp_path):
    run = tmp_path / "run"
    common = ["trainer.strategy=ddp_find_unused_parameters_true", f"data.shards={tokenizer_corpus}",
              "checkpoint_every_n_steps=2", *MICRO_TOKENIZER]
    launch(run, "tokenizer", "higgs_train.tokenizer.lit.build", "trainer.max_steps=2", *common)
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=False)
    assert ckpt["global_step"] == 2 and len(ckpt["optimizer_states"]) == 2
    launch(run, "tokenizer", "higgs_train.tokenizer.lit.build", "trainer.max_steps=3", *common)  # resumes at 2
    r0, r1 = probe(run, 0), probe(run, 1)
    assert [r["step"] for r in r0] == [r["step"] for r in r1] == [1, 2, 3]
    assert all(r["world"] == 2 for r in r0 + r1)
    for a, b in zip(r0, r1):
        # generator, discriminator and the EMA codebooks (model buffers) equal on both ranks
        assert a["params"] == b["params"] and a["parts"] == b["parts"], a["step"]
        assert a["batch"] != b["batch"], a["step"]          # ... from different data on each rank
    for part, kind in (("model", "params"), ("model", "buffers"), ("disc", "params")):
        # all move; the discriminator first steps at step 2 (GAN from global step 1) and again at 3
        assert len({r["parts"][part][kind] for r in r0}) == 3, (part, kind)
    exported = AudioTokenizer.from_pretrained(run / "export")      # rank 0's final generator and codebooks
    assert sha1(exported.parameters()) == r0[-1]["parts"]["model"]["params"]
    assert sha1(exported.buffers()) == r0[-1]["parts"]["model"]["buffers"]
