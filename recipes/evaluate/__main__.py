"""`python -m recipes.evaluate model=LLM_EXPORT tokenizer=AUDIO_TOKENIZER_EXPORT eval_set=FILE [out_dir=eval]`.

The synthesizer and scorers are whatever configs/recipes/evaluate/evaluate.yaml names (`_target_`s in the
wings); `--help` shows the whole config.
"""
from __future__ import annotations

import logging
import time

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from higgs_train.config import package_configs
from higgs_train.evaluate.evalset import load_eval_set
from higgs_train.evaluate.harness import EvalResult, evaluate

log = logging.getLogger("recipes.evaluate")


def run(cfg: DictConfig) -> EvalResult:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    items, bad = load_eval_set(cfg.eval_set)
    t0 = time.perf_counter()
    synth = instantiate(cfg.synthesizer)
    scorers = {k: instantiate(v) for k, v in (cfg.get("scorers") or {}).items() if v is not None}
    log.info("loaded synthesizer and %d scorers in %.1f s; %d items (%d bad)", len(scorers),
             time.perf_counter() - t0, len(items), len(bad))
    meta = {k: OmegaConf.select(cfg, k) for k in ("model", "tokenizer", "eval_set", "quantize")}
    meta["sampling"] = OmegaConf.to_container(cfg.sampling, resolve=True)
    return evaluate(synth, scorers, items, cfg.out_dir, bad, progress=cfg.progress, meta=meta)


@hydra.main(version_base="1.3", config_path=str(package_configs("recipes") / "recipes/evaluate"),
             config_name="evaluate")
def main(cfg: DictConfig) -> None:
    try:
        res = run(cfg)
    except FileNotFoundError as e:   # a wrong path on the command line: say which, no traceback
        raise SystemExit(f"error: {e}") from None
    print(f"{res.summary['ok']}/{res.summary['items']} items ok; means: "
          + ", ".join(f"{k}={v:.4g}" for k, v in res.summary["means"].items())
          + "; stop reasons: " + (", ".join(f"{k} {v:.0%}" for k, v in res.summary["stop_reasons"].items() if v)
                                  or "not reported") + f"; table: {res.out_dir}/results.md")


if __name__ == "__main__":
    main()
