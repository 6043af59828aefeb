"""A stage's YAML and its constructor agree: one default, not two that drift apart.

Every configs/pipeline/<stage>/<backend>.yaml with a `_target_` names only arguments the target
takes, and where the code also has a scalar default it equals the YAML's value (a library
caller who builds the stage by hand gets what the pipeline runs)."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from higgs_train.config import CONFIG_DIR

FILES = sorted(p for p in (CONFIG_DIR / "pipeline").glob("*/*.yaml")
               if "_target_" in (yaml.safe_load(p.read_text()) or {}))


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_matches_constructor_defaults(path: Path):
    cfg = yaml.safe_load(path.read_text())
    module, name = cfg["_target_"].rsplit(".", 1)
    params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    for key, value in cfg.items():
        if key.startswith("_"):
            continue
        assert key in params, f"{path.name}: {key} is not an argument of {cfg['_target_']}"
        default = params[key].default
        if default is not inspect.Parameter.empty and isinstance(default, (int, float, str, bool)):
            assert default == value, f"{path.name}: {key}={value!r} but the code defaults to {default!r}"


def test_there_are_stage_configs():
    assert len(FILES) >= 8
