"""`python -m data_pipeline input_dir=IN output_dir=OUT [overrides]`: curate a folder of raw audio.

Stage backends are config groups (configs/pipeline/<stage>/<backend>.yaml) addressed by stage
name, e.g. `diarization=pyannote diarization.path=DIR transcribe=none vad.threshold=0.6`.
`--help` lists the groups and the full config. See data_pipeline/run.py for what happens.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from data_pipeline.run import curate
from higgs_train.config import CONFIG_DIR

PIPELINE_CONFIGS = CONFIG_DIR / "pipeline"


def config_args(argv: list[str]) -> list[str]:
    """argv plus the search path that makes configs/pipeline/<stage>/ the `<stage>` group, so that
    overrides read `vad=silero` rather than `pipeline/vad=silero`."""
    if any(a.startswith("hydra.searchpath") for a in argv):
        return argv
    return [f"hydra.searchpath=[file://{PIPELINE_CONFIGS}]", *argv]


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="curate")
def main(cfg: DictConfig) -> None:
    curate(cfg)


if __name__ == "__main__":
    sys.argv[1:] = config_args(sys.argv[1:])
    main()
