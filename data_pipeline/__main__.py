"""`python -m data_pipeline input_dir=IN output_dir=OUT [overrides]`: curate a folder of raw audio.

Stage backends are config groups (configs/pipeline/<stage>/<backend>.yaml) addressed by stage
name, e.g. `diarization=pyannote diarization.path=DIR transcribe=none vad.threshold=0.6`.
`--help` lists the groups and the full config. See data_pipeline/run.py for what happens.
"""
from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from data_pipeline.config import config_args
from data_pipeline.run import curate
from data_pipeline.config import CONFIG_DIR


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="curate")
def main(cfg: DictConfig) -> None:
    curate(cfg)


if __name__ == "__main__":
    sys.argv[1:] = config_args(sys.argv[1:])
    main()
