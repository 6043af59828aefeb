"""Where the Hydra config tree lives, and the resolvers every entry point shares."""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

# The package's own copy of the tree: in a checkout a link to the top-level configs/, in a wheel the
# files themselves (pyproject's package-data), so `pip install .` composes configs like a checkout.
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def register_resolvers() -> None:
    # ${configs_dir:} lets YAML point at non-YAML files of the tree (DeepSpeed JSON).
    if not OmegaConf.has_resolver("configs_dir"):
        OmegaConf.register_new_resolver("configs_dir", lambda: str(CONFIG_DIR))


register_resolvers()


def model_size(kind: str, name: str) -> dict:
    """configs/model/<kind>/<name>.yaml as a plain dict: the one table of model sizes that
    training, tests, benchmarks and the demo all read (kind 'llm' | 'tokenizer')."""
    path = CONFIG_DIR / "model" / kind / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no model size {kind}/{name}: {path} is missing")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    cfg.pop("_target_", None)
    return cfg
