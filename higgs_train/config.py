"""Where the Hydra config tree lives, and the resolvers every entry point shares."""
from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from omegaconf import OmegaConf


def package_configs(package: str) -> Path:
    """<package>/configs, the config groups `package` ships. In a checkout each is a link to the one
    top-level configs/ tree; a wheel gives each package only the groups it owns (pyproject.toml's
    package-data), so an entry point that composes another package's groups names them in its
    `hydra.searchpath` (configs/recipes/train.yaml: the foundation's, through ${configs_dir:})."""
    return Path(find_spec(package).submodule_search_locations[0]).resolve() / "configs"


# The foundation's groups: train.yaml, convert.yaml, task/, model/, trainer/, logger/, deepspeed/, hydra/.
CONFIG_DIR = package_configs("higgs_train")


def register_resolvers() -> None:
    # ${configs_dir:} lets YAML point at the foundation's groups: non-YAML files (DeepSpeed JSON), and
    # the search path of a recipe that composes train.yaml.
    if not OmegaConf.has_resolver("configs_dir"):
        OmegaConf.register_new_resolver("configs_dir", lambda: str(CONFIG_DIR))


register_resolvers()


def model_size(kind: str, name: str) -> dict:
    """configs/model/<kind>/<name>.yaml as a plain dict: the one table of model sizes that
    training, tests, benchmarks and the demo all read (kind 'llm' | 'tokenizer'), without an LLM
    size's `family` (the model family whose config class reads the rest: higgs_train.families.size_config)."""
    path = CONFIG_DIR / "model" / kind / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no model size {kind}/{name}: {path} is missing")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    cfg.pop("family", None)
    return cfg
