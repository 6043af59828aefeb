"""Print what a cluster run will execute, without running it:

    python -m higgs_train.launch task=llm model=llm/full data.shards=/shared/shards text_tokenizer=/shared/tok \
        nodes=4 gpus_per_node=8 [cpus_per_task=8] [partition=gpu] [time=48:00:00] [trainer=deepspeed] \
        [run_dir=/shared/runs/a]

prints the `sbatch` line (slurm/train.sbatch), the `srun` line every task runs, and the training
config those tasks resolve. With sweep=true, the `python -m higgs_train.train -m hydra/launcher=slurm`
line instead (hydra-submitit-launcher). Keys other than the launch keys below are training overrides.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, fields
from typing import Optional

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from higgs_train.cli import BadValue, typed
from higgs_train.config import CONFIG_DIR

SBATCH = "slurm/train.sbatch"


@dataclass
class Launch:
    """The launch keys (every other argument is a training override, checked by Hydra's compose)."""
    nodes: int = 1
    gpus_per_node: int = 8
    cpus_per_task: int = 8          # per GPU: data loading workers and the rest of the task
    partition: Optional[str] = None
    time: str = "48:00:00"          # Slurm [D-]HH:MM:SS
    trainer: str = "deepspeed"
    run_dir: Optional[str] = None
    sweep: bool = False             # a Hydra multirun over the comma lists of the overrides


LAUNCH_KEYS = {f.name for f in fields(Launch)}


def split_args(argv: list[str]) -> tuple[Launch, list[str]]:
    """(launch settings, typed by OmegaConf as every entry point's config is, training overrides)."""
    mine = [a for a in argv if a.partition("=")[1] and a.partition("=")[0] in LAUNCH_KEYS]
    overrides = [a for a in argv if a not in mine]
    try:
        launch = typed(Launch, mine)
    except BadValue as e:
        raise SystemExit(f"error: {e}") from None
    for k in ("nodes", "gpus_per_node", "cpus_per_task"):
        if getattr(launch, k) < 1:
            raise SystemExit(f"{k} must be a positive integer, got {getattr(launch, k)!r}")
    return launch, overrides


def minutes(t: str) -> int:
    """Slurm time ([D-]HH:MM:SS) -> minutes (submitit's timeout_min)."""
    days, _, hms = t.rpartition("-")
    h, m, s = ([0, 0] + [int(x) for x in hms.split(":")])[-3:]
    return int(days or 0) * 1440 + h * 60 + m + (s > 0)


def commands(launch: Launch, overrides: list[str]) -> dict:
    """The shell lines for these settings (strings) and the overrides every task adds."""
    n, g = launch.nodes, launch.gpus_per_node
    q = shlex.join
    if launch.sweep:
        hl = ["hydra/launcher=slurm", f"hydra.launcher.nodes={n}", f"hydra.launcher.gpus_per_node={g}",
              f"hydra.launcher.cpus_per_task={launch.cpus_per_task}", f"hydra.launcher.timeout_min={minutes(launch.time)}"]
        hl += [f"hydra.launcher.partition={launch.partition}"] if launch.partition else []
        task = [f"trainer={launch.trainer}", "++trainer.num_nodes=${hydra:launcher.nodes}",
                "trainer.devices=${hydra:launcher.gpus_per_node}",
                f"run_dir={launch.run_dir or '${hydra:sweep.dir}/${hydra:sweep.subdir}'}"]
        return {"sweep": q(["python", "-m", "higgs_train.train", "-m", *hl, *task, *overrides]),
                "task_overrides": [f"trainer={launch.trainer}", f"++trainer.num_nodes={n}",
                                   f"trainer.devices={g}", "run_dir=" + (launch.run_dir or "<sweep dir>/<job num>")]}
    env = [f"TRAINER={launch.trainer}"] + ([f"RUN_DIR={launch.run_dir}"] if launch.run_dir else [])
    opts = [f"--nodes={n}", f"--ntasks-per-node={g}", f"--gpus-per-node={g}", f"--cpus-per-task={launch.cpus_per_task}",
            f"--time={launch.time}"]
    opts += [f"--partition={launch.partition}"] if launch.partition else []
    run_dir = launch.run_dir or "runs/higgs-train-<job id>"
    task = [f"trainer={launch.trainer}", f"++trainer.num_nodes={n}", f"trainer.devices={g}",
            f"run_dir={run_dir}", "resume=true"]
    return {"sbatch": " ".join(env) + " " + q(["sbatch", *opts, SBATCH, *overrides]),
            "srun": q(["srun", "--kill-on-bad-exit=1", "python", "-m", "higgs_train.train", *task, *overrides]),
            "task_overrides": task}


def resolved_config(overrides: list[str], task_overrides: list[str]) -> str:
    ov = [o for o in task_overrides if "<" not in o] + overrides
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=ov)
    return OmegaConf.to_yaml(cfg, resolve=True)


def main(argv: list[str]) -> None:
    launch, overrides = split_args(argv)
    cmds = commands(launch, overrides)
    n, g = launch.nodes, launch.gpus_per_node
    print(f"# {n} node(s) x {g} GPU(s) = {n * g} ranks, one Slurm task per GPU")
    if "sweep" in cmds:
        print("# submit the sweep (one Slurm job per point, hydra-submitit-launcher):")
        print(cmds["sweep"])
    else:
        print("# submit (requeued on preemption, resumes from run_dir/checkpoints/last.ckpt):")
        print(cmds["sbatch"])
        print("# every task then runs:")
        print(cmds["srun"])
    if "sweep" in cmds and any("," in o for o in overrides):
        print("# resolved config: one per sweep point (run without sweep lists to see one)")
        return
    print("# resolved training config of each task:")
    print(resolved_config(overrides, cmds["task_overrides"]))


if __name__ == "__main__":
    main(sys.argv[1:])
