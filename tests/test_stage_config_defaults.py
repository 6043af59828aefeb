"""A stage's YAML and its constructor agree: one default, not two that drift apart.

Every configs/pipeline/<stage>/<backend>.yaml with a `_target_` (and every nested part with one,
such as a quality metric) names only arguments the target takes, and where the code also has a
scalar default it equals the YAML's value (a library caller who builds the stage by hand gets what
the pipeline runs)."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest
import yaml

from data_pipeline.config import CONFIG_DIR

FILES = sorted(p for p in (CONFIG_DIR / "pipeline").glob("*/*.yaml")
               if "_target_" in (yaml.safe_load(p.read_text()) or {}))


def targets(node, where: str = ""):
    """Every node with a `_target_` in a config tree (a stage and, nested, its parts: quality metrics)."""
    if isinstance(node, dict):
        if "_target_" in node:
            yield where or "<root>", node
        for k, v in node.items():
            yield from targets(v, f"{where}.{k}" if where else k)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_yaml_matches_constructor_defaults(path: Path):
    for where, cfg in targets(yaml.safe_load(path.read_text())):
        module, name = cfg["_target_"].rsplit(".", 1)
        params = inspect.signature(getattr(importlib.import_module(module), name)).parameters
        for key, value in cfg.items():
            if key.startswith("_") or isinstance(value, dict) and "_target_" in value:
                continue
            assert key in params, f"{path.name} {where}: {key} is not an argument of {cfg['_target_']}"
            default = params[key].default
            if default is not inspect.Parameter.empty and isinstance(default, (int, float, str, bool)):
                assert default == value, f"{path.name} {where}: {key}={value!r} but the code defaults to {default!r}"


def test_nested_parts_are_checked_too():
    quality = yaml.safe_load((CONFIG_DIR / "pipeline/quality/dnsmos.yaml").read_text())
    assert [w for w, _ in targets(quality)] == ["<root>", "metrics.dnsmos", "metrics.snr", "metrics.clipping",
                                                "metrics.bandwidth", "metrics.loudness"]


def test_there_are_stage_configs():
    assert len(FILES) >= 8
