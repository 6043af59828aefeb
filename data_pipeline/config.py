"""How every curation entry point reads its config: the stage groups' search path, the
${cpu_count:} resolver, and building a stage from its node (python -m data_pipeline, merge,
the tokenize stage's callers and the tests share these)."""
from __future__ import annotations

import os

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from higgs_train.config import package_configs

CONFIG_DIR = package_configs("data_pipeline")   # curate.yaml, tokenize.yaml, pipeline/
PIPELINE_CONFIGS = CONFIG_DIR / "pipeline"


def config_args(argv: list[str]) -> list[str]:
    """argv plus the search path that makes configs/pipeline/<stage>/ the `<stage>` group, so that
    overrides read `vad=silero` rather than `pipeline/vad=silero`."""
    if any(a.startswith("hydra.searchpath") for a in argv):
        return argv
    return [f"hydra.searchpath=[file://{PIPELINE_CONFIGS}]", *argv]


def compose_curation(overrides: list[str]) -> DictConfig:
    """The config `python -m data_pipeline OVERRIDES` runs with (its `hydra:` node left out), for a
    caller that curates in its own process (recipes/finetune/run.py). Works inside another Hydra
    app too: its Hydra (one per process) is set aside while composing and put back after."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    caller = GlobalHydra.instance().hydra if GlobalHydra.instance().is_initialized() else None
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            return compose("curate", overrides=config_args(list(overrides)))
    finally:
        if caller is not None:
            GlobalHydra.instance().initialize(caller)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cpu_count"):
        OmegaConf.register_new_resolver("cpu_count", lambda: len(os.sched_getaffinity(0)))


register_resolvers()


def build_stage(node):
    """instantiate a stage (None when its node has no _target_, e.g. transcribe=none). A `threads: 0`
    key ("this worker's share of the cores") reaches the stage as 0: it asks data_pipeline.cores.share()
    when it runs, since the share grows as the other workers run out of sources."""
    if node is None or node.get("_target_") is None:
        return None
    return instantiate(OmegaConf.to_container(node, resolve=True), _convert_="all")
