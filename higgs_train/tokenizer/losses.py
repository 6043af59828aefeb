"""Codec losses: multi-scale mel L1, multi-resolution STFT, adversarial, feature matching."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio

# (window, n_mels) pairs as in DAC: short windows for timing, long ones for pitch.
MEL_SCALES = ((32, 5), (64, 10), (128, 20), (256, 40), (512, 80), (1024, 160), (2048, 320))
STFT_SIZES = (512, 1024, 2048)


class MelLoss(nn.Module):
    """L1 between log10 mel spectrograms at several window sizes (also the reported 'mel distance')."""

    def __init__(self, sample_rate: int):
        super().__init__()
        self.mels = nn.ModuleList(
            torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=w, hop_length=w // 4, n_mels=m, power=1.0,
                                                 center=True, f_min=0.0)
            for w, m in MEL_SCALES)

    def forward(self, x, y):  # [B, 1, T] each
        loss = 0.0
        for mel in self.mels:
            loss = loss + F.l1_loss(mel(x).clamp(min=1e-5).log10(), mel(y).clamp(min=1e-5).log10())
        return loss / len(self.mels)


class STFTLoss(nn.Module):
    """Multi-resolution STFT loss: spectral convergence + log-magnitude L1."""

    def __init__(self):
        super().__init__()
        for n in STFT_SIZES:
            self.register_buffer(f"win{n}", torch.hann_window(n), persistent=False)

    def forward(self, x, y):
        loss = 0.0
        for n in STFT_SIZES:
            w = getattr(self, f"win{n}")
            X = torch.stft(x[:, 0], n, n // 4, window=w, return_complex=True).abs()
            Y = torch.stft(y[:, 0], n, n // 4, window=w, return_complex=True).abs()
            sc = torch.linalg.norm(Y - X) / torch.linalg.norm(Y).clamp(min=1e-7)
            loss = loss + sc + F.l1_loss(X.clamp(min=1e-5).log(), Y.clamp(min=1e-5).log())
        return loss / len(STFT_SIZES)


def d_loss(real: list, fake: list, kind: str) -> torch.Tensor:
    """Discriminator loss over sub-discriminators (logits = last feature map)."""
    loss = 0.0
    for r, f in zip(real, fake):
        r, f = r[-1], f[-1]
        if kind == "lsgan":
            loss = loss + (1 - r).pow(2).mean() + f.pow(2).mean()
        else:  # hinge
            loss = loss + F.relu(1 - r).mean() + F.relu(1 + f).mean()
    return loss / len(real)


def g_loss(fake: list, kind: str) -> torch.Tensor:
    loss = 0.0
    for f in fake:
        f = f[-1]
        loss = loss + ((1 - f).pow(2).mean() if kind == "lsgan" else F.relu(1 - f).mean())
    return loss / len(fake)


def feature_matching(real: list, fake: list) -> torch.Tensor:
    """L1 between discriminator features of real and generated audio (real side has no grad)."""
    loss, n = 0.0, 0
    for r, f in zip(real, fake):
        for a, b in zip(r[:-1], f[:-1]):
            loss = loss + F.l1_loss(b, a.detach())
            n += 1
    return loss / n
