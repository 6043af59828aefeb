"""A task.build wrapper for the cluster tests (run in subprocesses with tests/ on PYTHONPATH).

    task.build._target_=cluster_probe.build +task.build.inner=higgs_train.llm.lit.build

builds the real (module, data module) and adds one hook to the module: after every training
step it appends {rank, step, params sha1, batch sha1, parts} to run_dir/probe/rank<R>.jsonl, so a
test can compare parameters across ranks; `parts` holds, per top-level submodule, the sha1 of its
parameters and of its buffers (the tokenizer's generator and discriminator apart, and its EMA
codebooks, buffers that move outside any optimizer). With +task.build.pause_at=N every rank stops after step N
(the optimizer has stepped, the row is written), writes probe/paused.rank<R> and sleeps until killed:
a test then preempts the job for real (`scancel --signal=USR1`, what `sbatch --signal=USR1@90` sends)
at a known step, so its result can be compared bit for bit with an uninterrupted run.
"""
from __future__ import annotations

import hashlib
import json
import time
import types
from pathlib import Path

import torch
from hydra.utils import get_method


def sha1(tensors) -> str:
    h = hashlib.sha1()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def build(cfg, inner: str, pause_at: int | None = None):
    module, datamodule = get_method(inner)(cfg=cfg)
    out = Path(cfg.run_dir) / "probe"

    def on_train_batch_end(self, outputs, batch, batch_idx):
        out.mkdir(parents=True, exist_ok=True)
        tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)] if isinstance(batch, dict) else [batch]
        row = {"rank": self.global_rank, "world": self.trainer.world_size, "step": self.global_step,
               "params": sha1(p for p in self.parameters()), "batch": sha1(tensors),
               "parts": {name: {"params": sha1(m.parameters()), "buffers": sha1(m.buffers())}
                         for name, m in self.named_children()}}
        with open(out / f"rank{self.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")
        if pause_at is not None and self.global_step == pause_at:
            (out / f"paused.rank{self.global_rank}").touch()
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:   # signal handlers run between these sleeps
                time.sleep(0.1)

    module.on_train_batch_end = types.MethodType(on_train_batch_end, module)
    return module, datamodule
