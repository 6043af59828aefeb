"""Cluster configs: DeepSpeed JSON in DeepSpeed's own parser and in Lightning's DeepSpeedStrategy,
the Hydra Slurm launcher config, and `python -m higgs_train.launch`."""
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import get_class, instantiate

from higgs_train.config import CONFIG_DIR
from higgs_train.launch import commands, minutes, split_args

ROOT = Path(__file__).resolve().parent.parent


def train_cfg(*overrides, hydra=False):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("stage", [2, 3])
@pytest.mark.parametrize("world", [8, 32])
def test_deepspeed_json_parses_for_a_world_size(monkeypatch, stage, world):
    ds_config = pytest.importorskip("deepspeed.runtime.config")
    conf = json.loads((CONFIG_DIR / f"deepspeed/zero{stage}.json").read_text())
    # the "auto" values Lightning fills from the trainer (micro batch from the loader, clip, precision)
    conf.update(train_micro_batch_size_per_gpu=1, gradient_accumulation_steps=4, gradient_clipping=1.0,
                bf16={"enabled": True})
    monkeypatch.setattr(ds_config.dist, "get_rank", lambda: 0)   # no process group needed to parse
    parsed = ds_config.DeepSpeedConfig(conf, mpu=SimpleNamespace(get_data_parallel_world_size=lambda: world))
    assert parsed.world_size == world
    assert parsed.train_batch_size == 1 * 4 * world
    assert parsed.zero_optimization_stage == stage and parsed.zero_enabled
    assert parsed.bfloat16_config.enabled and parsed.gradient_clipping == 1.0
    assert parsed.zero_config.overlap_comm and parsed.zero_config.reduce_bucket_size == 200_000_000
    if stage == 3:
        assert parsed.zero_config.gather_16bit_weights_on_model_save


@pytest.mark.parametrize("stage", [2, 3])
def test_lightning_deepspeed_strategy_from_trainer_config(stage):
    pytest.importorskip("deepspeed")
    cfg = train_cfg("task=llm", "trainer=deepspeed", "++trainer.num_nodes=4", "trainer.devices=8",
                    f"trainer.strategy.config={CONFIG_DIR}/deepspeed/zero{stage}.json")
    strategy = instantiate(cfg.trainer.strategy)
    assert type(strategy).__name__ == "DeepSpeedStrategy"
    assert strategy.config["zero_optimization"]["stage"] == stage
    assert strategy.config["gradient_clipping"] == "auto"   # Lightning fills it from trainer.gradient_clip_val
    assert cfg.trainer.num_nodes == 4 and cfg.trainer.gradient_clip_val == 1.0


def test_hydra_slurm_launcher_config():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = train_cfg("hydra/launcher=slurm", "hydra.launcher.nodes=4", "hydra.launcher.gpus_per_node=4",
                    "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=600", hydra=True)
    hl = cfg.hydra.launcher
    assert get_class(hl._target_).__name__ == "SlurmLauncher"
    assert (hl.nodes, hl.gpus_per_node, hl.tasks_per_node, hl.partition, hl.timeout_min) == (4, 4, 4, "gpu", 600)
    assert hl.signal_delay_s == 90 and hl.max_num_timeout == 20


def test_launch_prints_the_commands_a_job_runs():
    launch, overrides = split_args(["task=llm", "data.shards=/s", "nodes=4", "gpus_per_node=8", "partition=gpu",
                                    "run_dir=/shared/runs/a"])
    assert overrides == ["task=llm", "data.shards=/s"]
    cmds = commands(launch, overrides)
    assert cmds["sbatch"] == ("TRAINER=deepspeed RUN_DIR=/shared/runs/a sbatch --nodes=4 --ntasks-per-node=8 "
                              "--gpus-per-node=8 --cpus-per-task=8 --time=48:00:00 --partition=gpu slurm/train.sbatch task=llm data.shards=/s")
    assert cmds["srun"] == ("srun --kill-on-bad-exit=1 python -m higgs_train.train trainer=deepspeed "
                            "++trainer.num_nodes=4 trainer.devices=8 run_dir=/shared/runs/a resume=true "
                            "task=llm data.shards=/s")
    # the srun line's overrides are the ones slurm/train.sbatch passes (tests/test_cluster_slurm.py runs it)
    sbatch = (ROOT / "slurm/train.sbatch").read_text()
    for key in ("trainer=", "++trainer.num_nodes=", "trainer.devices=", "run_dir=", "resume=true"):
        assert key in sbatch
    sweep = commands(split_args(["nodes=2", "time=1-00:30:00", "sweep=true", "task.optim.lr=1e-4,3e-4"])[0],
                     ["task.optim.lr=1e-4,3e-4"])["sweep"]
    assert "hydra/launcher=slurm" in sweep and "hydra.launcher.timeout_min=1470" in sweep and "-m" in sweep.split()
    assert "hydra.launcher.cpus_per_task=8" in sweep
    assert minutes("2:00:00") == 120 and minutes("45:00") == 45
    with pytest.raises(SystemExit, match="nodes must be a positive integer"):
        split_args(["nodes=0"])
    with pytest.raises(SystemExit, match="'two' of type 'str' could not be converted to Integer"):
        split_args(["nodes=two"])     # typed by OmegaConf, as every entry point's config is
    assert split_args(["sweep=true"])[0].sweep is True


def test_launch_cli_resolves_the_task_config(tmp_path):
    r = subprocess.run([sys.executable, "-m", "higgs_train.launch", "task=llm", "data.shards=/s", "text_tokenizer=/t",
                        "nodes=2", "gpus_per_node=4", "run_dir=/r"], capture_output=True, text=True, cwd=ROOT,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "2 node(s) x 4 GPU(s) = 8 ranks" in r.stdout
    config = r.stdout.split("# resolved training config of each task:\n", 1)[1]
    assert "num_nodes: 2" in config and "devices: 4" in config and "run_dir: /r" in config
    assert "DeepSpeedStrategy" in config and "zero2.json" in config
