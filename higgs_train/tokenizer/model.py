"""AudioTokenizer: waveform <-> 8 x 1024 residual-VQ codes at 25 frames/s.

    wav [B,1,T] --acoustic encoder--> a [B,latent,F] --+
    wav --frozen teacher--> h [B,H,F] --semantic enc--> s [B,sem,F] --+--concat--> linear --> RVQ --> z_q
    z_q --linear--> acoustic decoder --> wav_hat [B,1,F*hop]
    z_q --linear--> semantic decoder --> h_hat (training only: MSE to h)
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio.functional as AF
from safetensors.torch import load_file, save_file

from higgs_train.tokenizer.config import TokenizerConfig
from higgs_train.tokenizer.modules import ConvStack, Decoder, Encoder
from higgs_train.tokenizer.quantizer import ResidualVQ
from higgs_train.tokenizer.semantic import Teacher, teacher_config_dict, teacher_from_config, teacher_from_dir

CHUNK_SECONDS = 30.0    # encode() splits longer audio into chunks of this length ...
CONTEXT_SECONDS = 2.0   # ... each seen with this much audio either side, then trimmed


class AudioTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig, teacher: nn.Module | None = None):
        super().__init__()
        if cfg.semantic and teacher is None:
            teacher = teacher_from_dir(cfg.teacher) if cfg.teacher_config is None else \
                teacher_from_config(cfg.teacher_config)
        if teacher is not None and cfg.teacher_config is None:
            cfg.teacher_config = teacher_config_dict(teacher)
        self.cfg = cfg
        widths = [min(cfg.channels * 2 ** i, cfg.max_channels) for i in range(len(cfg.strides) + 1)]
        self.encoder = Encoder(widths, cfg.strides, cfg.res_units, cfg.latent_dim)
        self.decoder = Decoder(widths, cfg.strides, cfg.res_units, cfg.latent_dim)
        fused = cfg.latent_dim
        if cfg.semantic:
            self.teacher = Teacher(teacher)
            self.semantic_encoder = ConvStack(self.teacher.dim, cfg.semantic_dim, cfg.semantic_dim, cfg.semantic_layers)
            self.semantic_decoder = ConvStack(cfg.semantic_dim, cfg.semantic_dim, self.teacher.dim, cfg.semantic_layers)
            self.to_semantic = nn.Linear(cfg.codebook_dim, cfg.semantic_dim)
            fused += cfg.semantic_dim
        self.fuse = nn.Linear(fused, cfg.codebook_dim)
        self.quantizer = ResidualVQ(cfg.n_codebooks, cfg.codebook_size, cfg.codebook_dim, cfg.ema_decay,
                                    cfg.dead_code_threshold, cfg.quantizer_dropout)
        self.to_acoustic = nn.Linear(cfg.codebook_dim, cfg.latent_dim)

    # ---- properties the rest of the project reads -------------------------------------------
    @property
    def sample_rate(self) -> int:
        return self.cfg.sample_rate

    @property
    def hop(self) -> int:
        return self.cfg.hop

    @property
    def n_codebooks(self) -> int:
        return self.cfg.n_codebooks

    @property
    def codebook_size(self) -> int:
        return self.cfg.codebook_size

    @property
    def frame_rate(self) -> float:
        return self.cfg.frame_rate

    # ---- training forward ----------------------------------------------------------------
    def _pad(self, wav: torch.Tensor) -> torch.Tensor:
        """[B, 1, T] -> [B, 1, ceil(T / hop) * hop] (zeros on the right)."""
        T = wav.shape[-1]
        return F.pad(wav, (0, math.ceil(T / self.hop) * self.hop - T))

    def _latent(self, wav: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """wav [B, 1, T] (T a multiple of hop) -> fused latent [B, codebook_dim, F], teacher target."""
        a = self.encoder(wav)  # [B, latent, F]
        target = None
        if self.cfg.semantic:
            target = self.teacher(wav, self.sample_rate, a.shape[-1])  # [B, H, F]
            a = torch.cat([a, self.semantic_encoder(target)], 1)
        return self.fuse(a.transpose(1, 2)).transpose(1, 2), target

    def _decode_latent(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.to_acoustic(z_q.transpose(1, 2)).transpose(1, 2))

    def forward(self, wav: torch.Tensor, gen: torch.Generator | None = None) -> dict:
        """wav [B, 1, T] at 24 kHz -> dict(recon [B,1,T], codes, commit, semantic (loss), stats)."""
        T = wav.shape[-1]
        z, target = self._latent(self._pad(wav))
        q = self.quantizer(z, gen)
        out = {"recon": self._decode_latent(q["z_q"])[..., :T], "codes": q["codes"], "commit": q["commit"],
               "stats": q["stats"], "semantic": wav.new_zeros(())}
        if target is not None:
            s = self.to_semantic(q["z_q"].transpose(1, 2)).transpose(1, 2)
            out["semantic"] = F.mse_loss(self.semantic_decoder(s), target)
        return out

    # ---- inference API ------------------------------------------------------------------
    def _prepare(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        wav = torch.as_tensor(wav)
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() == 2:
            wav = wav[:, None]
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"wav must be [B, T] or [B, 1, T] mono, got {tuple(wav.shape)}")
        wav = wav.to(self.fuse.weight.device, torch.float32)
        if sample_rate != self.sample_rate:
            wav = AF.resample(wav, sample_rate, self.sample_rate)
        return wav

    @torch.no_grad()
    def encode(self, wav: torch.Tensor, sample_rate: int, chunk_seconds: float = CHUNK_SECONDS) -> torch.Tensor:
        """wav [B, T] or [B, 1, T] at `sample_rate` -> codes LongTensor [B, 8, ceil(T' / hop)] (T' at 24 kHz).

        Audio longer than `chunk_seconds` is encoded in chunks, each with CONTEXT_SECONDS
        of real audio either side that is encoded and then dropped, so the codes at a seam
        see the same neighbourhood as without chunking.
        """
        wav = self._prepare(wav, sample_rate)
        n_frames = math.ceil(wav.shape[-1] / self.hop)
        wav = self._pad(wav)
        chunk = max(1, int(chunk_seconds * self.frame_rate))
        ctx = int(CONTEXT_SECONDS * self.frame_rate)
        codes = []
        for f0 in range(0, n_frames, chunk):
            f1 = min(f0 + chunk, n_frames)
            a, b = max(0, f0 - ctx), min(n_frames, f1 + ctx)
            z, _ = self._latent(wav[..., a * self.hop:b * self.hop])
            codes.append(self.quantizer(z)["codes"][..., f0 - a:f1 - a])
        return torch.cat(codes, -1)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, k, F] (k <= 8: the first k codebooks) -> wav [B, 1, F * hop] at 24 kHz."""
        codes = torch.as_tensor(codes).long().to(self.fuse.weight.device)
        if codes.dim() == 2:
            codes = codes[None]
        return self._decode_latent(self.quantizer.decode(codes))

    # ---- export format: config.json + model.safetensors ------------------------------------
    def save_pretrained(self, export_dir) -> Path:
        d = Path(export_dir)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        tmp = d / f".model.safetensors.{os.getpid()}.tmp"
        save_file(state, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, d / "model.safetensors")
        cfg = self.cfg.to_dict()
        cfg["teacher"] = None  # the export carries the teacher itself (teacher_config + weights)
        tmp = d / f".config.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"model_type": "higgs_audio_tokenizer", **cfg}, indent=2))
        os.replace(tmp, d / "config.json")
        return d

    @classmethod
    def from_pretrained(cls, export_dir, device: str | torch.device = "cpu") -> "AudioTokenizer":
        d = Path(export_dir)
        for f in ("config.json", "model.safetensors"):
            if not (d / f).exists():
                raise FileNotFoundError(f"not a tokenizer export: {d / f} is missing")
        raw = json.loads((d / "config.json").read_text())
        raw.pop("model_type", None)
        model = cls(TokenizerConfig.from_dict(raw))
        model.load_state_dict(load_file(str(d / "model.safetensors")))
        return model.to(device).eval()
