"""slurm/*.sbatch under fake `srun`, `scontrol`, `sbatch` and `python` placed first on PATH.

The fakes record their argv and environment; fake srun starts SLURM_NTASKS tasks with the rank
variables real srun sets (SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID), so Lightning's own
SLURMEnvironment can be asked what each task would be. One slow test runs the tiny LLM through
train.sbatch for real: preempted by SIGUSR1, checkpointed and requeued by Lightning, resumed.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cluster_common import MICRO_LLM, llm_corpus  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "slurm/train.sbatch"
CURATE = ROOT / "slurm/curate.sbatch"

FAKES = {
    "srun": r"""
        printf '%s\n' "$@" > "$FAKE_LOG/srun.argv"
        while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done   # srun's own options
        per_node=${SLURM_NTASKS_PER_NODE:-$SLURM_NTASKS}
        pids=()
        for ((i = 0; i < SLURM_NTASKS; i++)); do
            SLURM_PROCID=$i SLURM_LOCALID=$((i % per_node)) SLURM_NODEID=$((i / per_node)) "$@" &
            pids+=($!)
        done
        rc=0
        for p in "${pids[@]}"; do wait "$p" || rc=$?; done
        exit $rc
    """,
    "scontrol": r"""printf '%s\n' "$*" >> "$FAKE_LOG/scontrol.log" """,
    "sbatch": r"""
        n=$(ls "$FAKE_LOG" | grep -c '^sbatch\.' || true)
        printf '%s\n' "$@" > "$FAKE_LOG/sbatch.$n.argv"
        echo "$((1000 + n))"        # --parsable: the job id
    """,
    "fake-python": r"""
        printf '%s\n' "$@" > "$FAKE_LOG/task-${SLURM_PROCID:-x}.argv"
        env > "$FAKE_LOG/task-${SLURM_PROCID:-x}.env"
    """,
}


@pytest.fixture
def fake(tmp_path):
    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in FAKES.items():
        p = bin_dir / name
        p.write_text("#!/usr/bin/env bash\nset -eu\n" + textwrap.dedent(body))
        p.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "PL_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_LOG=str(log), PYTHON=str(bin_dir / "fake-python"))
    return env, log


def run(script, env, *args, cwd, **extra):
    return subprocess.run(["bash", str(script), *args], env={**env, **extra}, cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def read_env(path: Path) -> dict:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def slurm_job(nodes: int, per_node: int, **extra) -> dict:
    """What Slurm puts in the batch script's environment."""
    return dict(SLURM_JOB_ID="4242", SLURM_JOB_NAME="higgs-train", SLURM_NNODES=str(nodes),
                SLURM_NTASKS=str(nodes * per_node), SLURM_NTASKS_PER_NODE=str(per_node),
                SLURM_NODELIST=f"gpu[07-{7 + nodes - 1:02d}]" if nodes > 1 else "gpu07", **extra)


@pytest.mark.parametrize("script", [TRAIN, CURATE])
def test_sbatch_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


def test_train_sbatch_one_task_per_gpu_with_slurm_ranks(fake, tmp_path, monkeypatch):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    env, log = fake
    r = run(TRAIN, env, "task=llm", "data.shards=/data/s", cwd=tmp_path, **slurm_job(2, 3))
    assert r.returncode == 0, r.stderr
    assert "2 node(s) x 3 task(s)" in r.stdout
    run_dir = tmp_path / "runs/higgs-train-4242"          # default: stable across requeues (same job id)
    assert run_dir.is_dir()
    tasks = sorted(log.glob("task-*.argv"))
    assert len(tasks) == 6
    for i in range(6):
        argv = (log / f"task-{i}.argv").read_text().splitlines()
        assert argv[:2] == ["-m", "higgs_train.train"]
        assert {"trainer=deepspeed", "++trainer.num_nodes=2", "trainer.devices=3", f"run_dir={run_dir}",
                "resume=true", "task=llm", "data.shards=/data/s",
                f"hydra.run.dir={run_dir}/hydra/4242-0"} == set(argv[2:])
        task_env = read_env(log / f"task-{i}.env")
        for k, v in task_env.items():
            if k.startswith("SLURM_"):
                monkeypatch.setenv(k, v)
        monkeypatch.delenv("MASTER_ADDR", raising=False)
        monkeypatch.delenv("MASTER_PORT", raising=False)
        # what Lightning makes of this task's environment
        assert SLURMEnvironment.detect()
        senv = SLURMEnvironment()
        assert (senv.global_rank(), senv.local_rank(), senv.node_rank(), senv.world_size()) == (i, i % 3, i // 3, 6)
        senv.validate_settings(num_devices=3, num_nodes=2)
        assert senv.main_address == "gpu07" and 10000 <= senv.main_port <= 19999
    assert "--kill-on-bad-exit=1" in (log / "srun.argv").read_text().splitlines()


def test_train_sbatch_requeue_promotes_newest_preemption_checkpoint(fake, tmp_path):
    env, log = fake
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints/last.ckpt"
    last.write_text("step 200")
    os.utime(last, (1_000, 1_000))
    (run_dir / "hpc_ckpt_1.ckpt").write_text("old preemption")
    (run_dir / "hpc_ckpt_2.ckpt").write_text("step 317")           # mtime now: newer than last.ckpt
    job = slurm_job(1, 2, SLURM_RESTART_COUNT="1", RUN_DIR=str(run_dir))
    r = run(TRAIN, env, "task=llm", cwd=tmp_path, **job)
    assert r.returncode == 0, r.stderr
    assert last.read_text() == "step 317" and not list(run_dir.glob("hpc_ckpt_*"))
    argv = (log / "task-1.argv").read_text().splitlines()
    assert f"run_dir={run_dir}" in argv and "resume=true" in argv and f"hydra.run.dir={run_dir}/hydra/4242-1" in argv

    # a preemption checkpoint older than last.ckpt is dropped, last.ckpt kept
    (run_dir / "hpc_ckpt_1.ckpt").write_text("stale")
    os.utime(run_dir / "hpc_ckpt_1.ckpt", (500, 500))
    assert run(TRAIN, env, cwd=tmp_path, **job).returncode == 0
    assert last.read_text() == "step 317" and not list(run_dir.glob("hpc_ckpt_*"))


def test_curate_sbatch_array_then_merge(fake, tmp_path):
    env, log = fake
    (tmp_path / "in").mkdir()
    r = run(CURATE, env, "in", "out", "filter.min_snr_db=5", cwd=tmp_path, NUM_SHARDS="3")
    assert r.returncode == 0, r.stderr
    array = (log / "sbatch.0.argv").read_text().splitlines()
    merge = (log / "sbatch.1.argv").read_text().splitlines()
    assert "--array=0-2" in array and str(CURATE) in array
    assert array[-3:] == [str(tmp_path / "in"), str(tmp_path / "out"), "filter.min_snr_db=5"]
    assert "--dependency=afterok:1000" in merge
    wrap = next(a for a in merge if a.startswith("--wrap="))
    assert "-m data_pipeline.merge" in wrap and f"output_dir={tmp_path / 'out'}" in wrap and "filter.min_snr_db=5" in wrap

    # one array task (what Slurm runs for index 1 of 3)
    r = run(CURATE, env, str(tmp_path / "in"), str(tmp_path / "out"), "filter.min_snr_db=5", cwd=tmp_path,
            SLURM_ARRAY_TASK_ID="1", SLURM_ARRAY_TASK_COUNT="3", SLURM_CPUS_PER_TASK="16", SLURM_JOB_ID="7")
    assert r.returncode == 0, r.stderr
    argv = (log / "task-x.argv").read_text().splitlines()
    assert argv == ["-m", "data_pipeline", f"input_dir={tmp_path / 'in'}", f"output_dir={tmp_path / 'out'}",
                    "num_shards=3", "shard_index=1", "workers=16", "filter.min_snr_db=5"]


@pytest.mark.slow
def test_train_sbatch_preempt_requeue_resume_for_real(fake, tmp_path, llm_corpus):
    """SIGUSR1 at step 2 -> Lightning saves hpc_ckpt_1.ckpt and calls `scontrol requeue 4242`; the
    requeued script promotes it and the same run dir resumes at step 2."""
    env, log = fake
    run_dir = tmp_path / "run"
    env = {**env, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT / "tests"), "OMP_NUM_THREADS": "1",
           "RUN_DIR": str(run_dir), "TRAINER": "cpu"}
    args = ["task=llm", f"data.shards={llm_corpus / 'shards'}", f"text_tokenizer={llm_corpus / 'tok'}",
            "trainer.max_steps=4", "checkpoint_every_n_steps=100", *MICRO_LLM,
            "task.build._target_=cluster_probe.build", "+task.build.inner=higgs_train.llm.lit.build"]
    r = run(TRAIN, env, *args, "+task.build.preempt_at=2", cwd=tmp_path, **slurm_job(1, 1))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert (log / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert (run_dir / "hpc_ckpt_1.ckpt").exists() and not (run_dir / "checkpoints/last.ckpt").exists()

    r = run(TRAIN, env, *args, cwd=tmp_path, **slurm_job(1, 1, SLURM_RESTART_COUNT="1"))
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "resuming from hpc_ckpt_1.ckpt" in r.stdout
    assert torch.load(run_dir / "checkpoints/last.ckpt", weights_only=False)["global_step"] == 2
    steps = [json.loads(line)["step"] for line in (run_dir / "probe/rank0.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]     # steps 1-2 before preemption, 3-4 after: none redone, none lost
    assert (run_dir / "export/model.safetensors").exists()
