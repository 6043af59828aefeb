"""Where the Hydra config tree lives, and the resolvers every entry point shares."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def register_resolvers() -> None:
    # ${configs_dir:} lets YAML point at non-YAML files of the tree (DeepSpeed JSON).
    if not OmegaConf.has_resolver("configs_dir"):
        OmegaConf.register_new_resolver("configs_dir", lambda: str(CONFIG_DIR))


register_resolvers()
