"""slurm/*.sbatch submitted, unchanged, to a real one-node Slurm cluster (the `slurm_cluster` fixture in
tests/conftest.py, started from slurm/local/): the curation array and its merge job, training with
a real preemption and requeue, the line `python -m higgs_train.launch` prints. Resources come from
the sbatch options and environment variables the scripts document, sized to the node (2 CPUs).

One test keeps a fake `srun` (and python) on PATH: the multi-node rank layout, which a one-node
cluster cannot show.
"""
import json
import os
import re
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cluster_common import MICRO_LLM, llm_corpus  # noqa: F401  (fixture)
from curate_common import BROKEN, COMMON, DUPLICATES, GOOD
from data_pipeline.run import PARTS, slice_sources
from data_pipeline.stages.ingest import source_key

ROOT = Path(__file__).resolve().parent.parent
TRAIN = ROOT / "slurm/train.sbatch"
CURATE = ROOT / "slurm/curate.sbatch"
# train.sbatch on the local node: 2 tasks (the script's one task per GPU), CPUs only
CPU_JOB = ["--ntasks-per-node=2", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10:00"]


def slurm(env, *cmd, cwd=None) -> str:
    r = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{cmd}: {r.stdout}{r.stderr}"
    return r.stdout


def jobs(env, job_id) -> list[dict]:
    """`scontrol show job -o` as dicts: one per job, or per task of an array."""
    out = slurm(env, "scontrol", "show", "job", "-o", str(job_id))
    return [dict(re.findall(r"(?:^|\s)(\w+)=(\S*)", line)) for line in out.splitlines() if line.strip()]


def wait_for(what, check, timeout):
    """Poll check() until it returns something true (returned), or fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"not within {timeout} s: {what}")


def ended(env, job_id) -> list[dict] | None:
    """The job's (or each array task's) record once none is pending or running."""
    js = jobs(env, job_id)
    return js if all(j["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED")
                     for j in js) else None


def job_log(path: Path) -> str:
    return path.read_text() if path.exists() else "(no output file)"


@pytest.mark.parametrize("script", [TRAIN, CURATE])
def test_sbatch_scripts_parse(script):
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0


@pytest.mark.slow
def test_curate_array_and_merge_on_slurm(slurm_cluster, curate_inputs, curate_clean_run, tmp_path):
    """NUM_SHARDS=2 bash slurm/curate.sbatch IN OUT: array task 0 is cancelled while it runs; task 1
    completes, the merge job behind afterok never runs (Slurm cancels it). Rerunning the same line
    keeps every finished source, runs both tasks and the merge, and gives the single run's corpus."""
    env = {**slurm_cluster.env, "NUM_SHARDS": "2", "SBATCH_ARRAY_ARGS": "--cpus-per-task=1 --mem=1G --time=10:00",
           "SBATCH_MERGE_ARGS": "--cpus-per-task=1 --mem=1G --time=10:00"}
    out = tmp_path / "out"

    def submit():
        line = slurm(env, "bash", str(CURATE), str(curate_inputs), str(out), *COMMON, cwd=tmp_path)
        m = re.search(r"array job (\d+) \(2 tasks\) and merge job (\d+)", line)
        assert m, line
        return m.groups()

    array, merge = submit()
    wait_for("array task 0 running", lambda: jobs(env, f"{array}_0")[0]["JobState"] == "RUNNING", 60)
    slurm(env, "scancel", f"{array}_0")
    tasks = wait_for("array tasks ended", lambda: ended(env, array), 120)
    states = {t["ArrayTaskId"]: t["JobState"] for t in tasks}
    assert states == {"0": "CANCELLED", "1": "COMPLETED"}, job_log(tmp_path / f"slurm-curate-{array}_1.out")
    m = wait_for("merge job ended", lambda: ended(env, merge), 30)[0]
    assert (m["JobState"], m["Reason"]) == ("CANCELLED", "DependencyNeverSatisfied")
    assert not (out / "manifest.jsonl").exists() and not (tmp_path / f"slurm-curate-merge-{merge}.out").exists()
    done = {p.name: p.stat().st_mtime_ns for p in (out / PARTS).glob("*.json")}
    slice1 = {f"{source_key(rel)}.json" for rel in slice_sources(GOOD + DUPLICATES + BROKEN, 2, 1)}
    assert slice1 <= set(done) and len(slice1) == 4

    array, merge = submit()
    m = wait_for("merge job ended", lambda: ended(env, merge), 150)[0]
    assert m["JobState"] == "COMPLETED", job_log(tmp_path / f"slurm-curate-merge-{merge}.out")
    tasks = jobs(env, array)
    assert sorted((t["ArrayTaskId"], t["JobState"], t["ExitCode"]) for t in tasks) == [
        ("0", "COMPLETED", "0:0"), ("1", "COMPLETED", "0:0")]
    assert all((tmp_path / f"slurm-curate-{array}_{i}.out").exists() for i in range(2))
    # finished sources were not redone
    assert {n: (out / PARTS / n).stat().st_mtime_ns for n in done} == done
    for name in ["manifest.jsonl", "rejected.jsonl"]:
        assert (out / name).read_text() == (curate_clean_run / name).read_text()
    shards = sorted(p.name for p in (curate_clean_run / "shards").iterdir())
    assert sorted(p.name for p in (out / "shards").iterdir()) == shards
    assert all((out / "shards" / n).read_bytes() == (curate_clean_run / "shards" / n).read_bytes() for n in shards)


def train_job(env, run_dir: Path, corpus: Path, *extra, cwd: Path) -> str:
    """sbatch slurm/train.sbatch (tiny LLM, TRAINER=ddp over gloo, 2 tasks, 4 steps, a checkpoint every 2
    steps); the job id."""
    args = ["task=llm", f"data.shards={corpus / 'shards'}", f"text_tokenizer={corpus / 'tok'}",
            "trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.strategy=ddp", "trainer.max_steps=4",
            "checkpoint_every_n_steps=2", *MICRO_LLM,
            "task.build._target_=cluster_probe.build", "+task.build.inner=higgs_train.llm.lit.build", *extra]
    return slurm({**env, "TRAINER": "ddp", "RUN_DIR": str(run_dir)},
                 "sbatch", "--parsable", *CPU_JOB, str(TRAIN), *args, cwd=cwd).strip()


@pytest.mark.slow
def test_train_sbatch_preempted_requeued_resumes_to_the_uninterrupted_weights(slurm_cluster, llm_corpus, tmp_path):
    """Both ranks stop after step 2 (tests/cluster_probe.py: pause_at); `scancel --signal=USR1` then
    delivers what `#SBATCH --signal=USR1@90` would: Lightning saves hpc_ckpt_1.ckpt and runs `scontrol
    requeue`; Slurm kills the job and starts it again, same job id, SLURM_RESTART_COUNT=1; the script
    promotes the checkpoint (newer than the step-2 last.ckpt) and the run resumes at step 3. Its final weights equal those of a run of
    the same 4 steps that was never interrupted."""
    env = slurm_cluster.env
    pre, ref = tmp_path / "preempted", tmp_path / "uninterrupted"
    job = train_job(env, pre, llm_corpus, "+task.build.pause_at=2", cwd=tmp_path)
    log = tmp_path / f"slurm-higgs-train-{job}.out"
    wait_for("both ranks at step 2", lambda: len(list((pre / "probe").glob("paused.rank*"))) == 2 or ended(env, job),
             120)
    assert len(list((pre / "probe").glob("paused.rank*"))) == 2, job_log(log)
    slurm(env, "scancel", "--signal=USR1", job)
    wait_for("requeued", lambda: jobs(env, job)[0]["Restarts"] == "1", 60)
    ref_job = train_job(env, ref, llm_corpus, cwd=tmp_path)   # runs while the requeued job waits to restart
    for j in (job, ref_job):
        wait_for(f"job {j} ended", lambda: ended(env, j), 180)
    final = jobs(env, job)[0]
    assert (final["JobState"], final["Restarts"], final["ExitCode"]) == ("COMPLETED", "1", "0:0"), job_log(log)
    assert jobs(env, ref_job)[0]["JobState"] == "COMPLETED", job_log(tmp_path / f"slurm-higgs-train-{ref_job}.out")

    text = log.read_text()      # --open-mode=append: both runs of the job in one file
    assert f"job {job} restart 0: 1 node(s) x 2 task(s)" in text and f"job {job} restart 1:" in text
    assert "restart 1: resuming from hpc_ckpt_1.ckpt" in text
    assert not list(pre.glob("hpc_ckpt_*"))
    probe = {r: [json.loads(x) for x in (pre / f"probe/rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)}
    assert [row["step"] for row in probe[0]] == [row["step"] for row in probe[1]] == [1, 2, 3, 4]   # none redone
    ref_rows = [json.loads(x) for x in (ref / "probe/rank0.jsonl").read_text().splitlines()]
    assert [row["params"] for row in probe[0]] == [row["params"] for row in ref_rows]
    ckpts = [torch.load(d / "checkpoints/last.ckpt", weights_only=False) for d in (pre, ref)]
    assert [c["global_step"] for c in ckpts] == [4, 4]
    assert all(torch.equal(v, ckpts[1]["state_dict"][k]) for k, v in ckpts[0]["state_dict"].items())
    a, b = load_file(pre / "export/model.safetensors"), load_file(ref / "export/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_train_sbatch_promotes_only_a_newer_preemption_checkpoint(slurm_cluster, tmp_path):
    """The requeued script's checkpoint promotion, as Slurm runs it (PYTHON=echo stands in for the
    training, so each task prints the arguments real srun gave it)."""
    env = {**slurm_cluster.env, "PYTHON": "echo", "TRAINER": "ddp"}
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    last = run_dir / "checkpoints/last.ckpt"
    last.write_text("step 200")
    os.utime(last, (1_000, 1_000))
    (run_dir / "hpc_ckpt_1.ckpt").write_text("old preemption")
    (run_dir / "hpc_ckpt_2.ckpt").write_text("step 317")           # mtime now: newer than last.ckpt

    def run_job():
        job = slurm({**env, "RUN_DIR": str(run_dir)}, "sbatch", "--parsable", *CPU_JOB, str(TRAIN), "task=llm",
                    cwd=tmp_path).strip()
        j = wait_for("job ended", lambda: ended(env, job), 60)[0]
        text = job_log(tmp_path / f"slurm-higgs-train-{job}.out")
        assert j["JobState"] == "COMPLETED", text
        return job, text

    job, text = run_job()
    assert last.read_text() == "step 317" and not list(run_dir.glob("hpc_ckpt_*"))
    tasks = [line.split() for line in text.splitlines() if line.startswith("-m higgs_train.train")]
    assert len(tasks) == 2
    for argv in tasks:
        assert set(argv) == {"-m", "higgs_train.train", "trainer=ddp", "++trainer.num_nodes=1", "trainer.devices=2",
                             f"run_dir={run_dir}", "resume=true", f"hydra.run.dir={run_dir}/hydra/{job}-0",
                             "task=llm"}

    # a preemption checkpoint older than last.ckpt is dropped, last.ckpt kept
    (run_dir / "hpc_ckpt_1.ckpt").write_text("stale")
    os.utime(run_dir / "hpc_ckpt_1.ckpt", (500, 500))
    run_job()
    assert last.read_text() == "step 317" and not list(run_dir.glob("hpc_ckpt_*"))


def test_launch_prints_a_line_this_sbatch_accepts(slurm_cluster, tmp_path):
    """The `sbatch` line of `python -m higgs_train.launch`, run as printed, with the partition down so
    the job waits instead of running: sbatch takes it, and what Slurm recorded fits the node."""
    env = slurm_cluster.env
    out = slurm(env, env["PYTHON"], "-m", "higgs_train.launch", "task=llm", "data.shards=/shared/shards",
                "text_tokenizer=/shared/tok", "nodes=1", "gpus_per_node=2", "cpus_per_task=1", "time=0:30:00",
                f"run_dir={tmp_path / 'run'}", cwd=ROOT)
    line = next(x for x in out.splitlines() if "sbatch " in x and not x.startswith("#"))
    slurm(env, "scontrol", "update", "PartitionName=local", "State=DOWN")
    try:
        r = subprocess.run(["bash", "-c", line], env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        job = re.fullmatch(r"Submitted batch job (\d+)\n", r.stdout).group(1)
        j = wait_for("the scheduler's verdict", lambda: [j for j in jobs(env, job) if j["Reason"] != "None"], 30)[0]
        slurm(env, "scancel", job)
        assert (j["JobState"], j["Reason"]) == ("PENDING", "PartitionDown")
        assert (j["JobName"], j["NumNodes"], j["NumTasks"], j["TimeLimit"], j["Requeue"]) == (
            "higgs-train", "1-1", "2", "00:30:00", "1")
        assert j["TresPerNode"] == "gres:gpu:2" and j["MinCPUsNode"] == "2" and j["Command"] == str(TRAIN)
    finally:
        slurm(env, "scontrol", "update", "PartitionName=local", "State=UP")


# ------------------------------------------------------------------ fake srun: what one node cannot show

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
    "fake-python": r"""
        printf '%s\n' "$@" > "$FAKE_LOG/task-${SLURM_PROCID:-x}.argv"
        env > "$FAKE_LOG/task-${SLURM_PROCID:-x}.env"
    """,
}


def test_train_sbatch_one_task_per_gpu_with_slurm_ranks(tmp_path, monkeypatch):
    """2 nodes x 3 GPUs: what train.sbatch passes and what Lightning's SLURMEnvironment makes of each
    task's ranks. Fake srun (it starts SLURM_NTASKS tasks with the rank variables real srun sets):
    the local cluster has one node, so node ranks and the 2-node world need a fake."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    bin_dir, log = tmp_path / "bin", tmp_path / "log"
    bin_dir.mkdir()
    log.mkdir()
    for name, body in FAKES.items():
        p = bin_dir / name
        p.write_text("#!/usr/bin/env bash\nset -eu\n" + textwrap.dedent(body))
        p.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MASTER_", "PL_"))}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", FAKE_LOG=str(log), PYTHON=str(bin_dir / "fake-python"),
               SLURM_JOB_ID="4242", SLURM_JOB_NAME="higgs-train", SLURM_NNODES="2", SLURM_NTASKS="6",
               SLURM_NTASKS_PER_NODE="3", SLURM_NODELIST="gpu[07-08]")
    r = subprocess.run(["bash", str(TRAIN), "task=llm", "data.shards=/data/s"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "2 node(s) x 3 task(s)" in r.stdout
    run_dir = tmp_path / "runs/higgs-train-4242"          # default: stable across requeues (same job id)
    assert run_dir.is_dir()
    assert len(list(log.glob("task-*.argv"))) == 6
    for i in range(6):
        argv = (log / f"task-{i}.argv").read_text().splitlines()
        assert argv[:2] == ["-m", "higgs_train.train"]
        assert {"trainer=deepspeed", "++trainer.num_nodes=2", "trainer.devices=3", f"run_dir={run_dir}",
                "resume=true", "task=llm", "data.shards=/data/s",
                f"hydra.run.dir={run_dir}/hydra/4242-0"} == set(argv[2:])
        task_env = dict(line.split("=", 1) for line in (log / f"task-{i}.env").read_text().splitlines() if "=" in line)
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
