"""The frozen semantic teacher (a `transformers` HuBERT) and its 25 Hz features, as the release
computes them: 24 -> 16 kHz (torchaudio), 160 samples of zeros each side, mean of all hidden
states, every 2nd frame.

The teacher comes from a local directory (never a hub) or from an HF config dict (a random,
seeded teacher for tests and CPU demos). An export stores the config dict and the weights.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF

TEACHER_SR = 16_000
TEACHER_PAD = 160      # samples at 16 kHz, each side: HuBERT's frames then centre on the codec's
DOWNSAMPLE = 2         # HuBERT runs at 50 Hz; the codec at 25 Hz: every 2nd frame
RANDOM_TEACHER_SEED = 0
# Eager attention, as the original's transformers (4.46) computes HuBERT: bit-equal features.
ATTENTION = "eager"


def teacher_from_dir(path: str) -> nn.Module:
    from transformers import AutoModel

    p = Path(path)
    if not (p / "config.json").exists():
        raise FileNotFoundError(f"semantic teacher not found: {p / 'config.json'} is missing "
                                "(model.teacher must be a local HuBERT directory, e.g. pretrained/hubert-base-ls960)")
    return AutoModel.from_pretrained(str(p), local_files_only=True, attn_implementation=ATTENTION)


def teacher_from_config(cfg: dict) -> nn.Module:
    """A teacher of the given HF config, randomly initialised from a fixed seed (whatever the
    global RNG state): the tiny config's teacher is the same model every time."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(cfg)
    hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    hf_cfg._attn_implementation = ATTENTION
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_TEACHER_SEED)
        return AutoModel.from_config(hf_cfg, attn_implementation=ATTENTION)


def hf_config_dict(config) -> dict:
    """An HF config as the dict teacher_from_config takes: what differs from its defaults, with
    its model_type, without bookkeeping (versions, paths, dtype, attention choice)."""
    d = config.to_diff_dict()
    d["model_type"] = config.model_type
    for k in ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype",
              "_attn_implementation_autoset", "attn_implementation"):
        d.pop(k, None)
    return d


def teacher_config_dict(model: nn.Module) -> dict:
    return hf_config_dict(model.config)


@torch.no_grad()
def teacher_features(model: nn.Module, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
    """wav [B, 1, T] at `sample_rate` -> [B, S, H] at 25 Hz (the original's get_regress_target)."""
    x = AF.resample(wav, sample_rate, TEACHER_SR)
    x = F.pad(x[:, 0, :], (TEACHER_PAD, TEACHER_PAD))
    hidden = model(x, output_hidden_states=True).hidden_states  # L+1 x [B, 2S, H] at 50 Hz
    return torch.stack(hidden, dim=1).mean(1)[:, ::DOWNSAMPLE, :]


def teacher_frames(model: nn.Module, n_samples: int, sample_rate: int) -> int:
    """How many 25 Hz frames teacher_features gives for n_samples (no model run)."""
    n16 = -(-n_samples * TEACHER_SR // sample_rate)  # torchaudio's resample: ceil(T * new / old)
    n50 = int(model._get_feat_extract_output_lengths(torch.tensor(n16 + 2 * TEACHER_PAD)))
    return -(-n50 // DOWNSAMPLE) if n50 > 0 else 0
