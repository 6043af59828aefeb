"""The frozen semantic teacher (HuBERT / WavLM from `transformers`) and its 25 Hz target.

Training loads the teacher from a local directory (never a hub). The export stores the
teacher's HF config in the tokenizer config and its weights with the rest of the model,
so an exported tokenizer is self-contained.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF

TEACHER_SR = 16_000


def teacher_from_dir(path: str) -> nn.Module:
    from transformers import AutoModel

    p = Path(path)
    if not (p / "config.json").exists():
        raise FileNotFoundError(
            f"semantic teacher not found: {p} has no config.json (give a local HuBERT/WavLM directory, "
            "or teacher=null to train without the semantic path)")
    return AutoModel.from_pretrained(str(p), local_files_only=True)


def teacher_from_config(cfg: dict) -> nn.Module:
    """An uninitialised teacher of the given HF config (weights come from model.safetensors)."""
    from transformers import AutoConfig, AutoModel

    cfg = dict(cfg)
    hf_cfg = AutoConfig.for_model(cfg.pop("model_type"), **cfg)
    return AutoModel.from_config(hf_cfg)


def teacher_config_dict(model: nn.Module) -> dict:
    d = model.config.to_diff_dict()
    d["model_type"] = model.config.model_type
    for k in ("transformers_version", "_name_or_path", "architectures", "torch_dtype", "dtype"):
        d.pop(k, None)
    return d


class Teacher(nn.Module):
    """Frozen teacher: wav 24 kHz [B, 1, T] -> mean of all hidden layers at `n_frames` frames."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.dim = model.config.hidden_size

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()  # frozen: no dropout, no feature masking, ever
        return self

    @torch.no_grad()
    def forward(self, wav: torch.Tensor, sample_rate: int, n_frames: int) -> torch.Tensor:
        x = AF.resample(wav[:, 0].float(), sample_rate, TEACHER_SR)
        hidden = self.model(x, output_hidden_states=True).hidden_states  # L x [B, S, H] at 50 Hz
        h = torch.stack(hidden).mean(0).transpose(1, 2)  # [B, H, S]
        # 50 Hz -> 25 Hz (every 2nd frame for HuBERT), written as interpolation so any
        # teacher rate works and the length matches the codec's ceil(T / hop) exactly.
        return F.interpolate(h, size=n_frames, mode="linear", align_corners=False)
