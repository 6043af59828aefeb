"""AudioTokenizer: waveform <-> 8 x 1024 residual-VQ codes at 25 frames/s, in the topology of
the released Higgs Audio v2 tokenizer (docs/model.md, "Audio tokenizer"):

    wav [B,1,T] --acoustic encoder-------------------------------> a [B, D, F]
    wav --24->16 kHz, frozen HuBERT, mean of layers, every 2nd--> h [B, H, F] --semantic enc--> s [B, H, F]
    [a ; s] [B, D+H, F] --fc--> RVQ (8 stages, project_in/out to codebook_dim) --> z_q [B, D+H, F]
    z_q --fc2--> [B, D, F] --acoustic decoder--> wav_hat [B, 1, F*960]
    z_q --fc1--> [B, H, F] --semantic decoder--> h_hat (training only: MSE to h)

`from_pretrained` reads our exports, the original release's directories (config.json +
model.pth), the transformers port's (HiggsAudioV2TokenizerModel) and the tokenizer a Higgs TTS 3
checkpoint bundles; see
higgs_train/tokenizer/layouts.py (reading) and higgs_train/convert/tokenizer.py (writing).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_file

from higgs_train.files import atomic_path, write_text_atomic
from higgs_train.tokenizer.config import TokenizerConfig
from higgs_train.tokenizer.layouts import read
from higgs_train.tokenizer.modules import AcousticDecoder, AcousticEncoder, SemanticDecoder, SemanticEncoder
from higgs_train.tokenizer.quantizer import ResidualVQ
from higgs_train.tokenizer.semantic import (DOWNSAMPLE, TEACHER_PAD, teacher_config_dict, teacher_features,
                                            teacher_frames, teacher_from_config, teacher_from_dir)

CHUNK_SECONDS = 30.0    # encode() splits longer audio into chunks of this length ...
CONTEXT_SECONDS = 2.0   # ... each seen with this much audio either side, then trimmed
# The original's framing rule: where the acoustic and semantic frame counts differ, the
# acoustic encoder sees the waveform padded by this many samples each side (the port: 480).
FRAMING_PAD = TEACHER_PAD * DOWNSAMPLE


class AudioTokenizer(nn.Module):
    def __init__(self, cfg: TokenizerConfig, teacher: nn.Module | None = None):
        super().__init__()
        if teacher is None:  # a teacher directory wins over teacher_config (model.teacher=DIR on tiny)
            teacher = teacher_from_dir(cfg.teacher) if cfg.teacher else teacher_from_config(cfg.teacher_config)
        if cfg.teacher:
            cfg.teacher_config = teacher_config_dict(teacher)
        self.cfg = cfg
        H = teacher.config.hidden_size
        dim = cfg.latent_dim + H  # the fused space the RVQ works in (release: 256 + 768)
        self.acoustic_encoder = AcousticEncoder(cfg.channels, cfg.strides, cfg.latent_dim)
        self.acoustic_decoder = AcousticDecoder(cfg.latent_dim, cfg.decoder_channels, cfg.strides)
        self.encoder_semantic = SemanticEncoder(H)
        self.decoder_semantic = SemanticDecoder(H)
        self.semantic_model = teacher.eval().requires_grad_(False)
        self.fc = nn.Linear(dim, dim)
        self.fc1 = nn.Linear(dim, H)                  # to the semantic decoder
        self.fc2 = nn.Linear(dim, cfg.latent_dim)     # to the acoustic decoder
        self.quantizer = ResidualVQ(cfg.n_codebooks, cfg.codebook_size, dim, cfg.codebook_dim, cfg.ema_decay,
                                    cfg.dead_code_threshold, cfg.quantizer_dropout, cfg.kmeans_frames)

    def train(self, mode: bool = True):
        super().train(mode)
        self.semantic_model.eval()  # frozen: no dropout, no feature masking, ever
        return self

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

    # ---- frame counts (the original's, computed without running the model) ---------------
    def acoustic_frames(self, n_samples: int) -> int:
        n = n_samples
        for s in self.cfg.strides:  # kernel 2s, padding ceil(s/2)
            n = (n + 2 * math.ceil(s / 2) - 2 * s) // s + 1
        return max(n, 0)

    def _framing(self, n_samples: int) -> tuple[int, int]:
        """(acoustic padding each side, frames) of the original's rule for a clip of n_samples."""
        sem = teacher_frames(self.semantic_model, n_samples, self.sample_rate)
        if self.acoustic_frames(n_samples) == sem:
            return 0, sem
        return FRAMING_PAD, min(self.acoustic_frames(n_samples + 2 * FRAMING_PAD), sem)

    def n_frames(self, n_samples: int) -> int:
        """Frames encode() gives for n_samples at 24 kHz (clips under one hop count as one hop)."""
        return self._framing(max(n_samples, self.hop))[1]

    # ---- training forward ----------------------------------------------------------------
    def _fused(self, wav_acoustic: torch.Tensor, wav_semantic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (fc output [B, D+H, F], teacher features [B, F, H]), trimmed to the shorter path."""
        target = teacher_features(self.semantic_model, wav_semantic, self.sample_rate)  # [B, Fs, H]
        s = self.encoder_semantic(target.transpose(1, 2))  # [B, H, Fs]
        a = self.acoustic_encoder(wav_acoustic)            # [B, D, Fa]
        n = min(a.shape[2], s.shape[2])
        e = torch.cat([a[:, :, :n], s[:, :, :n]], dim=1)
        return self.fc(e.transpose(1, 2)).transpose(1, 2), target[:, :n]

    def _decode_latent(self, z_q: torch.Tensor) -> torch.Tensor:  # [B, D+H, F] -> [B, 1, F*hop]
        return self.acoustic_decoder(self.fc2(z_q.transpose(1, 2)).transpose(1, 2))

    def forward(self, wav: torch.Tensor, gen: torch.Generator | None = None) -> dict:
        """wav [B, 1, T] at 24 kHz -> dict(recon [B,1,T], codes [B,8,F], commit, latent, semantic (losses), stats).

        T is padded (zeros on the right) to a multiple of the hop, where both paths give
        T / hop frames, so training needs no framing rule."""
        T = wav.shape[-1]
        wav_p = F.pad(wav, (0, math.ceil(T / self.hop) * self.hop - T))
        z, target = self._fused(wav_p, wav_p)
        q = self.quantizer(z, gen)
        recon = self._decode_latent(q["z_q"])[..., :T]
        s_hat = self.decoder_semantic(self.fc1(q["z_q"].transpose(1, 2)).transpose(1, 2))
        return {"recon": recon, "codes": q["codes"], "commit": q["commit"], "latent": q["latent"], "stats": q["stats"],
                "semantic": F.mse_loss(target.transpose(1, 2), s_hat)}

    # ---- inference API ------------------------------------------------------------------
    def _prepare(self, wav, sample_rate: int) -> torch.Tensor:
        """-> float32 [B, 1, T] at 24 kHz on the model's device. Other rates are resampled as
        the original does (librosa.resample's default: soxr, quality 'HQ')."""
        wav = torch.as_tensor(wav)
        if wav.dim() == 1:
            wav = wav[None]
        if wav.dim() == 2:
            wav = wav[:, None]
        if wav.dim() != 3 or wav.shape[1] != 1:
            raise ValueError(f"wav must be [T], [B, T] or [B, 1, T] mono, got {tuple(wav.shape)}")
        wav = wav.float()
        if sample_rate != self.sample_rate:
            import soxr

            x = wav[:, 0].cpu().numpy()
            wav = torch.from_numpy(np.ascontiguousarray(
                soxr.resample(x.T, sample_rate, self.sample_rate, quality="HQ").T))[:, None]
        return wav.to(self.fc.weight.device)

    @torch.no_grad()
    def encode(self, wav, sample_rate: int, chunk_seconds: float = CHUNK_SECONDS) -> torch.Tensor:
        """wav [T], [B, T] or [B, 1, T] at `sample_rate` -> codes LongTensor [B, 8, n_frames(T')].

        Every item is taken to be T' samples long (T' at 24 kHz); for clips of different
        lengths use encode_batch (zero-padding changes a clip's codes: HuBERT's feature
        extractor normalises over the whole input). Codes equal the original code's: its
        framing rule (acoustic frames != semantic frames -> the acoustic path sees 320 samples
        of zeros each side, both trimmed to the shorter), its resampling. Clips shorter than one
        hop are zero-padded to one hop (the original cannot encode them).

        Audio longer than `chunk_seconds` is encoded in chunks, each with CONTEXT_SECONDS of
        real audio either side that is encoded and then dropped; the framing rule is decided
        for the whole clip, so chunking does not move the frames. Up to `chunk_seconds` the codes
        are the original's exactly; beyond, the original would run HuBERT (global attention and
        group norm) over the whole clip, at a memory cost quadratic in its length: chunked codes
        differ from whole-clip codes on 5-9 % of the frames (measured on speech, 2 s chunks),
        with seams below the codec's own error (tests/test_tokenizer.py).
        """
        wav = self._prepare(wav, sample_rate)
        if wav.shape[-1] < self.hop:
            wav = F.pad(wav, (0, self.hop - wav.shape[-1]))
        pad, n_frames = self._framing(wav.shape[-1])
        wav_a = F.pad(wav, (pad, pad))
        chunk = max(1, int(chunk_seconds * self.frame_rate))
        ctx = int(CONTEXT_SECONDS * self.frame_rate)
        if n_frames <= chunk:
            windows = [(0, n_frames, 0, None)]
        else:
            windows = [(f0, min(f0 + chunk, n_frames), max(0, f0 - ctx), min(n_frames, f0 + chunk + ctx))
                       for f0 in range(0, n_frames, chunk)]
        codes = []
        for f0, f1, a, b in windows:
            # the window that reaches the last frame runs to the end of the clip, so its
            # frame counts are the whole clip's minus a (the strides divide the hop)
            end = None if b is None or b == n_frames else b * self.hop
            z, _ = self._fused(wav_a[..., a * self.hop:end], wav[..., a * self.hop:end])
            codes.append(self.quantizer.encode(z)[..., f0 - a:f1 - a])
        return torch.cat(codes, -1)

    @torch.no_grad()
    def encode_batch(self, wavs: list, sample_rate: int, chunk_seconds: float = CHUNK_SECONDS) -> list[torch.Tensor]:
        """Clips of any lengths [T_i] -> codes [8, n_frames(T_i)] each, equal to encoding each
        clip alone: clips of equal length are batched together, never zero-padded."""
        groups: dict[int, list[int]] = {}
        for i, w in enumerate(wavs):
            groups.setdefault(len(w), []).append(i)
        out: list = [None] * len(wavs)
        for idx in groups.values():
            codes = self.encode(torch.stack([torch.as_tensor(np.asarray(wavs[i], np.float32)) for i in idx]),
                                sample_rate, chunk_seconds)
            for j, i in enumerate(idx):
                out[i] = codes[j]
        return out

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes [B, k, F] (k <= 8: the first k codebooks) -> wav [B, 1, F * hop] at 24 kHz."""
        codes = torch.as_tensor(codes).long().to(self.fc.weight.device)
        if codes.dim() == 2:
            codes = codes[None]
        return self._decode_latent(self.quantizer.decode(codes))

    # ---- export -------------------------------------------------------------------------
    def save_pretrained(self, export_dir) -> Path:
        """export_dir/{config.json, model.safetensors}: the whole model, teacher included."""
        d = Path(export_dir)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        with atomic_path(d / "model.safetensors") as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        cfg = self.cfg.to_dict()
        cfg["teacher"] = None  # the export carries the teacher itself (teacher_config + weights)
        write_text_atomic(d / "config.json", json.dumps({"model_type": "higgs_audio_tokenizer", **cfg}, indent=2))
        return d

    @classmethod
    def from_state(cls, cfg: TokenizerConfig, state: dict) -> "AudioTokenizer":
        """A model holding exactly `state` (our parameter names), every key required."""
        model = cls(cfg)
        model.load_state_dict(state, strict=True)
        return model

    @classmethod
    def from_pretrained(cls, model_dir, device: str | torch.device = "cpu", codec_config=None) -> "AudioTokenizer":
        """Our export, the original release's directory, the transformers port's, or a Higgs TTS 3
        checkpoint's bundled tokenizer (codec_config: its config, when not the release's; layouts.read_bundled)."""
        cfg, state = read(model_dir, codec_config)
        return cls.from_state(cfg, state).to(device).eval()
