"""`python -m recipes.train [train.yaml overrides] callbacks.eval.eval_set=FILE
callbacks.eval.synthesizer.tokenizer=DIR`: training (higgs_train.train's fit) with the evaluation
harness scoring the model every `callbacks.eval.every_n_steps` (configs/recipes/train.yaml). A
recipe, because the synthesizer (inference) and the scorers (data_pipeline) come from the wings."""
from __future__ import annotations

import hydra
from omegaconf import DictConfig

from higgs_train.config import package_configs
from higgs_train.train import fit


@hydra.main(version_base="1.3", config_path=str(package_configs("recipes")), config_name="recipes/train")
def main(cfg: DictConfig) -> None:
    fit(cfg)


if __name__ == "__main__":
    main()
