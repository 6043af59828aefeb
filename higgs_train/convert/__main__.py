"""python -m higgs_train.convert src=DIR dst=DIR to=native|hf|original [kind=tokenizer] (LLM or audio tokenizer)."""
from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from higgs_train.config import CONFIG_DIR
from higgs_train.convert import convert

log = logging.getLogger("higgs_train.convert")


@hydra.main(config_path=str(CONFIG_DIR), config_name="convert", version_base="1.3")
def main(cfg: DictConfig) -> None:
    kind, layout = convert(cfg.src, cfg.dst, cfg.to, cfg.kind, cfg.codec_config)
    log.info("%s: %s layout %s -> %s layout %s", kind, layout, cfg.src, cfg.to, cfg.dst)


if __name__ == "__main__":
    main()
