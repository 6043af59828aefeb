"""`python -m recipes.finetune voice_dir=DIR base=LLM_EXPORT tokenizer=AUDIO_TOKENIZER_EXPORT name=NAME`.

Options (configs/recipes/finetune.yaml): out_dir, mode=lora|full, lora.*, min_seconds, val_fraction,
val_every_n_steps, patience, curate.extra=[...], preset.*, and every key of train.yaml
(trainer=gpu, trainer.max_steps=..., task.optim.lr=...). `--help` shows the whole config.
"""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from higgs_train.config import package_configs
from recipes.finetune import FinetuneError


@hydra.main(version_base="1.3", config_path=str(package_configs("recipes")), config_name="recipes/finetune")
def main(cfg: DictConfig) -> None:
    from recipes.finetune.run import finetune

    try:
        finetune(cfg)
    except FinetuneError as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
