"""Training entry point: `python -m higgs_train.train task=tokenizer|llm [overrides]`.

The task config names a builder (`task.build`) that returns a LightningModule
(with an `export(dir)` method) and a LightningDataModule. Everything else —
trainer, strategy, logger, checkpoints, resume, export — is shared here.
"""
from __future__ import annotations

import logging
from pathlib import Path

import hydra
import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from higgs_train.config import CONFIG_DIR

log = logging.getLogger(__name__)


def last_checkpoint(ckpt_dir: Path) -> Path | None:
    last = ckpt_dir / "last.ckpt"
    return last if last.exists() else None


def fit(cfg: DictConfig) -> Path:
    """Train (or resume) the configured task; returns the export directory."""
    L.seed_everything(cfg.seed, workers=True)
    run_dir = Path(cfg.run_dir).resolve()
    ckpt_dir = run_dir / "checkpoints"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))

    module, datamodule = instantiate(cfg.task.build, cfg=cfg, _recursive_=False)
    callbacks = [
        ModelCheckpoint(dirpath=ckpt_dir, filename="step-{step}", auto_insert_metric_name=False,
                        save_last=True, save_top_k=-1, every_n_train_steps=cfg.checkpoint_every_n_steps),
        LearningRateMonitor(logging_interval="step"),
        # extra callbacks by name (e.g. evaluation every N steps, early stopping in fine-tuning)
        *(instantiate(c) for c in cfg.get("callbacks", {}).values() if c is not None),
    ]
    logger = instantiate(cfg.logger, save_dir=str(run_dir))
    trainer: L.Trainer = instantiate(cfg.trainer, default_root_dir=str(run_dir), callbacks=callbacks,
                                     logger=logger)
    ckpt = last_checkpoint(ckpt_dir) if cfg.resume else None
    if ckpt is not None:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, datamodule=datamodule, ckpt_path=str(ckpt) if ckpt else None)

    export_dir = run_dir / "export"
    if trainer.is_global_zero:
        module.export(export_dir)
        log.info("exported to %s", export_dir)
    return export_dir


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    fit(cfg)


if __name__ == "__main__":
    main()
