"""How every curation entry point reads its config: the stage groups' search path, the
${cpu_count:} resolver, and building a stage from its node (python -m data_pipeline, merge,
the tokenize stage's callers and the tests share these)."""
from __future__ import annotations

import os

from hydra.utils import instantiate
from omegaconf import OmegaConf

from higgs_train.config import CONFIG_DIR

PIPELINE_CONFIGS = CONFIG_DIR / "pipeline"


def config_args(argv: list[str]) -> list[str]:
    """argv plus the search path that makes configs/pipeline/<stage>/ the `<stage>` group, so that
    overrides read `vad=silero` rather than `pipeline/vad=silero`."""
    if any(a.startswith("hydra.searchpath") for a in argv):
        return argv
    return [f"hydra.searchpath=[file://{PIPELINE_CONFIGS}]", *argv]


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cpu_count"):
        OmegaConf.register_new_resolver("cpu_count", lambda: len(os.sched_getaffinity(0)))


register_resolvers()


def _share_threads(node, threads: int):
    """The node with every `threads: 0` ("all cores"), at any depth, set to `threads`."""
    if isinstance(node, dict):
        return {k: (threads if k == "threads" and v == 0 else _share_threads(v, threads)) for k, v in node.items()}
    if isinstance(node, list):
        return [_share_threads(v, threads) for v in node]
    return node


def build_stage(node, threads: int):
    """instantiate a stage; a `threads: 0` key ("all cores"), also in a nested part such as a
    quality metric, becomes this worker's share of them."""
    if node is None or node.get("_target_") is None:
        return None
    node = _share_threads(OmegaConf.to_container(node, resolve=True), threads)
    return instantiate(node, _convert_="all")
