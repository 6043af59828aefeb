"""Score the model being trained every N steps with the evaluation harness (configs/recipes/train.yaml).

On rank 0, at every `every_n_steps`-th optimiser step: build the synthesizer from the in-memory
model (`synthesizer(model=..., text_tokenizer=...)`, a partial from config, the same Engine path as
`python -m recipes.evaluate` on an export), run the harness on the eval set into
out_dir/step-N/, log the means as eval/<metric> to every logger and, with a WandbLogger, the first
`log_audio` items' audio. Evaluation runs without gradients, on its own RNG state, and puts every
submodule back in the train/eval mode it was in.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import lightning as L
import torch

from higgs_train.evaluate.evalset import load_eval_set
from higgs_train.evaluate.harness import evaluate

log = logging.getLogger(__name__)


@contextmanager
def measuring(model: torch.nn.Module):
    """Run something on a model mid-training without disturbing the training: no gradients, its own
    RNG state, and every submodule back in the train/eval mode it was in (generation puts the
    model in eval mode)."""
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            yield
    finally:
        for m, training in modes.items():
            m.train(training)


class EvalCallback(L.Callback):
    def __init__(self, synthesizer: Callable, scorers: dict, eval_set: str, out_dir: str,
                 every_n_steps: int = 500, log_audio: int = 4):
        if every_n_steps < 1:
            raise ValueError("every_n_steps must be >= 1")
        self.make_synthesizer = synthesizer
        self.scorers = {k: v for k, v in scorers.items() if v is not None}
        self.items, self.bad = load_eval_set(eval_set)   # read now: a wrong path fails before training
        self.out_dir = Path(out_dir)
        self.every = every_n_steps
        self.log_audio = log_audio
        self._done: set[int] = set()   # steps evaluated (accumulation repeats a global_step)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx):
        step = trainer.global_step
        if step == 0 or step % self.every or step in self._done:
            return
        self._done.add(step)
        if trainer.is_global_zero:
            self.run(trainer, pl_module, step)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule, step: int):
        model = pl_module.model
        if any(hasattr(p, "ds_id") for p in model.parameters()):
            log.warning("eval callback: parameters are partitioned (ZeRO-3); skipped at step %d", step)
            return None
        with measuring(model):
            synth = self.make_synthesizer(model=model, text_tokenizer=pl_module.tokenizer_dir)
            result = evaluate(synth, self.scorers, self.items, self.out_dir / f"step-{step}", self.bad,
                              progress=False, meta={"step": step})
        metrics = {f"eval/{k}": v for k, v in result.summary["means"].items()}
        metrics["eval/ok"] = result.summary["ok"]
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
            self._log_audio(lg, result, step)
        return result

    def _log_audio(self, logger, result, step: int) -> None:
        from lightning.pytorch.loggers import WandbLogger

        if not isinstance(logger, WandbLogger) or not self.log_audio:
            return
        import wandb

        rows = [r for r in result.rows if r["status"] == "ok"][:self.log_audio]
        logger.experiment.log({f"eval/audio/{r['id']}": wandb.Audio(str(result.out_dir / r["audio"]),
                                                                     caption=r["text"]) for r in rows}
                              | {"trainer/global_step": step})
