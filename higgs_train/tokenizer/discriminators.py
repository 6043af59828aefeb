"""GAN discriminators: multi-period (HiFi-GAN) and multi-scale STFT (EnCodec).

Each sub-discriminator returns its list of feature maps; the last one is the logit map.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

PERIODS = (2, 3, 5, 7, 11)
STFT_SIZES = (2048, 1024, 512)


class PeriodDisc(nn.Module):
    """Folds the waveform into [T/p, p] and looks at it with 2-D convs along time."""

    def __init__(self, period: int, ch: int):
        super().__init__()
        self.period = period
        widths = [1, ch, ch * 4, ch * 16, ch * 16]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(a, b, (5, 1), (3, 1) if i < 3 else 1, padding=(2, 0)))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])))
        self.out = weight_norm(nn.Conv2d(widths[-1], 1, (3, 1), padding=(1, 0)))

    def forward(self, x):  # [B, 1, T]
        B, C, T = x.shape
        x = F.pad(x, (0, (-T) % self.period), mode="reflect")
        x = x.view(B, C, -1, self.period)
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.1)
            feats.append(x)
        feats.append(self.out(x))
        return feats


class STFTDisc(nn.Module):
    """2-D convs over the complex STFT (real and imaginary parts as channels)."""

    def __init__(self, n_fft: int, ch: int):
        super().__init__()
        self.n_fft = n_fft
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        widths = [2, ch, ch, ch, ch]
        self.convs = nn.ModuleList(
            weight_norm(nn.Conv2d(a, b, (3, 9), (1, 2) if i > 0 else 1, padding=(1, 4)))
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])))
        self.out = weight_norm(nn.Conv2d(ch, 1, (3, 3), padding=(1, 1)))

    def forward(self, x):  # [B, 1, T]
        spec = torch.stft(x[:, 0], self.n_fft, self.n_fft // 4, window=self.window, return_complex=True)
        x = torch.stack([spec.real, spec.imag], 1).transpose(2, 3)  # [B, 2, frames, freq]
        feats = []
        for conv in self.convs:
            x = F.leaky_relu(conv(x), 0.2)
            feats.append(x)
        feats.append(self.out(x))
        return feats


class Discriminator(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.discs = nn.ModuleList([PeriodDisc(p, channels) for p in PERIODS] +
                                   [STFTDisc(n, channels) for n in STFT_SIZES])

    def forward(self, x) -> list[list[torch.Tensor]]:
        return [d(x) for d in self.discs]
