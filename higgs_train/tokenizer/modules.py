"""DAC-style convolutional encoder/decoder and the semantic conv stacks.

Encoder: conv -> 5 stride blocks (8, 5, 4, 2, 3) -> conv to the latent: [B, 1, T] -> [B, D, T/960].
Decoder mirrors it with transposed convs. Snake activations and weight norm as in DAC.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm


def wn_conv(*args, **kw) -> nn.Conv1d:
    return weight_norm(nn.Conv1d(*args, **kw))


def wn_tconv(*args, **kw) -> nn.ConvTranspose1d:
    return weight_norm(nn.ConvTranspose1d(*args, **kw))


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, one alpha per channel: a periodic prior that suits audio."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x):
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    def __init__(self, ch: int, dilation: int):
        super().__init__()
        self.block = nn.Sequential(
            Snake(ch), wn_conv(ch, ch, 7, dilation=dilation, padding=3 * dilation),
            Snake(ch), wn_conv(ch, ch, 1))

    def forward(self, x):
        return x + self.block(x)


def residual_stack(ch: int, n: int) -> list[nn.Module]:
    return [ResidualUnit(ch, 3 ** i) for i in range(n)]


class Encoder(nn.Module):
    def __init__(self, widths: list[int], strides, res_units: int, latent_dim: int):
        super().__init__()
        layers = [wn_conv(1, widths[0], 7, padding=3)]
        for c_in, c_out, s in zip(widths[:-1], widths[1:], strides):
            # kernel 2s, padding ceil(s/2): output length is exactly T / s
            layers += residual_stack(c_in, res_units)
            layers += [Snake(c_in), wn_conv(c_in, c_out, 2 * s, stride=s, padding=(s + 1) // 2)]
        layers += [Snake(widths[-1]), wn_conv(widths[-1], latent_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, wav):  # [B, 1, T] -> [B, latent, T / hop]
        return self.net(wav)


class Decoder(nn.Module):
    def __init__(self, widths: list[int], strides, res_units: int, latent_dim: int):
        super().__init__()
        widths = widths[::-1]
        layers = [wn_conv(latent_dim, widths[0], 7, padding=3)]
        for c_in, c_out, s in zip(widths[:-1], widths[1:], strides[::-1]):
            # output_padding s % 2 makes odd strides exact too: length L -> L * s
            layers += [Snake(c_in), wn_tconv(c_in, c_out, 2 * s, stride=s, padding=(s + 1) // 2,
                                             output_padding=s % 2)]
            layers += residual_stack(c_out, res_units)
        layers += [Snake(widths[-1]), wn_conv(widths[-1], 1, 7, padding=3), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):  # [B, latent, F] -> [B, 1, F * hop]
        return self.net(z)


class ConvStack(nn.Module):
    """Semantic encoder/decoder: in-projection, residual conv blocks, out-projection (same frame rate)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, n_blocks: int):
        super().__init__()
        self.inp = nn.Conv1d(d_in, d_hidden, 3, padding=1)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.ELU(), nn.Conv1d(d_hidden, d_hidden, 3, padding=1), nn.ELU(),
                          nn.Conv1d(d_hidden, d_hidden, 1)) for _ in range(n_blocks))
        self.out = nn.Conv1d(d_hidden, d_out, 3, padding=1)

    def forward(self, x):  # [B, d_in, F] -> [B, d_out, F]
        x = self.inp(x)
        for b in self.blocks:
            x = x + b(x)
        return self.out(x)
