"""The release's convolutional stacks, module for module (docs/model.md, "Audio tokenizer").

Acoustic (DAC, Snake + weight norm, residual units with dilations 1/3/9, kernel 2s):
    AcousticEncoder  [B, 1, T] -> [B, latent, T/960]   widths c, 2c, ..., 32c (release c = 64)
    AcousticDecoder  [B, latent, F] -> [B, 1, F*960]   widths d, d/2, ..., d/32 (release d = 1024),
                     upsampling in the same stride order as the encoder (8, 5, 4, 2, 3), as the
                     original does, output_padding s % 2, no final Tanh.
Semantic (xcodec's conv stack: ELU residual units without bias, block convs with bias):
    SemanticEncoder / SemanticDecoder  [B, H, F] -> [B, H, F]

Parameter names follow the transformers port (HiggsAudioV2TokenizerModel), so our state dict
is the port's except for weight norm (kept here: training needs it) and the converter in
higgs_train/convert/tokenizer.py is a short rename table.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm


class Snake(nn.Module):
    """x + sin^2(alpha x) / alpha, one alpha per channel: a periodic prior that suits audio."""

    def __init__(self, channels: int):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x):
        return x + (self.alpha + 1e-9).reciprocal() * torch.sin(self.alpha * x).pow(2)


class ResidualUnit(nn.Module):
    """x + conv1x1(snake(conv7_dilated(snake(x)))), same length."""

    def __init__(self, ch: int, dilation: int):
        super().__init__()
        self.snake1 = Snake(ch)
        self.conv1 = weight_norm(nn.Conv1d(ch, ch, 7, dilation=dilation, padding=3 * dilation))
        self.snake2 = Snake(ch)
        self.conv2 = weight_norm(nn.Conv1d(ch, ch, 1))

    def forward(self, x):
        return x + self.conv2(self.snake2(self.conv1(self.snake1(x))))


class EncoderBlock(nn.Module):
    """[B, c, L] -> [B, 2c, L / s]: three residual units, then a strided conv (kernel 2s)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.res_unit1, self.res_unit2, self.res_unit3 = (ResidualUnit(c_in, d) for d in (1, 3, 9))
        self.snake1 = Snake(c_in)
        self.conv1 = weight_norm(nn.Conv1d(c_in, c_out, 2 * stride, stride=stride, padding=math.ceil(stride / 2)))

    def forward(self, x):
        return self.conv1(self.snake1(self.res_unit3(self.res_unit2(self.res_unit1(x)))))


def zero_conv_biases(module: nn.Module) -> None:
    """DAC's initialisation of its biases (dac.model.dac.init_weights). With PyTorch's default
    bias init an untrained decoder's output is ~1000x larger than its input-dependent part: a
    fixed waveform repeating every 960 samples that training starts from and, in a few hundred
    CPU steps, never leaves (the demo codec's buzz)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.ConvTranspose1d)) and m.bias is not None:
            nn.init.zeros_(m.bias)


class AcousticEncoder(nn.Module):
    def __init__(self, channels: int, strides, latent_dim: int):
        super().__init__()
        widths = [channels * 2 ** i for i in range(len(strides) + 1)]
        self.conv1 = weight_norm(nn.Conv1d(1, channels, 7, padding=3))
        self.block = nn.ModuleList(EncoderBlock(a, b, s) for a, b, s in zip(widths[:-1], widths[1:], strides))
        self.snake1 = Snake(widths[-1])
        self.conv2 = weight_norm(nn.Conv1d(widths[-1], latent_dim, 3, padding=1))
        zero_conv_biases(self)

    def forward(self, wav):  # [B, 1, T] -> [B, latent, F]
        x = self.conv1(wav)
        for b in self.block:
            x = b(x)
        return self.conv2(self.snake1(x))


class DecoderBlock(nn.Module):
    """[B, c, L] -> [B, c/2, L * s]: a transposed conv (kernel 2s), then three residual units."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.snake1 = Snake(c_in)
        # output_padding s % 2 makes odd strides exact too: length L -> L * s
        self.conv_t1 = weight_norm(nn.ConvTranspose1d(c_in, c_out, 2 * stride, stride=stride,
                                                      padding=math.ceil(stride / 2), output_padding=stride % 2))
        self.res_unit1, self.res_unit2, self.res_unit3 = (ResidualUnit(c_out, d) for d in (1, 3, 9))

    def forward(self, x):
        return self.res_unit3(self.res_unit2(self.res_unit1(self.conv_t1(self.snake1(x)))))


class AcousticDecoder(nn.Module):
    def __init__(self, latent_dim: int, channels: int, strides):
        super().__init__()
        widths = [channels // 2 ** i for i in range(len(strides) + 1)]
        self.conv1 = weight_norm(nn.Conv1d(latent_dim, channels, 7, padding=3))
        self.block = nn.ModuleList(DecoderBlock(a, b, s) for a, b, s in zip(widths[:-1], widths[1:], strides))
        self.snake1 = Snake(widths[-1])
        self.conv2 = weight_norm(nn.Conv1d(widths[-1], 1, 7, padding=3))
        zero_conv_biases(self)

    def forward(self, z):  # [B, latent, F] -> [B, 1, F * hop]
        x = self.conv1(z)
        for b in self.block:
            x = b(x)
        return self.conv2(self.snake1(x))


class SemanticResidualUnit(nn.Module):
    """x + conv1x1(elu(conv3(elu(x)))), convs without bias (as xcodec)."""

    def __init__(self, ch: int):
        super().__init__()
        self.activation = nn.ELU()
        self.conv1 = nn.Conv1d(ch, ch, 3, padding=1, bias=False)
        self.conv2 = nn.Conv1d(ch, ch, 1, bias=False)

    def forward(self, x):
        return x + self.conv2(self.activation(self.conv1(self.activation(x))))


class SemanticEncoderBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.res_units = nn.ModuleList(SemanticResidualUnit(ch) for _ in range(2))
        self.conv = nn.Conv1d(ch, ch, 3, padding=1)

    def forward(self, x):
        for u in self.res_units:
            x = u(x)
        return self.conv(x)


class SemanticDecoderBlock(nn.Module):
    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, 3, padding=1)
        self.res_units = nn.ModuleList(SemanticResidualUnit(ch) for _ in range(2))

    def forward(self, x):
        x = self.conv(x)
        for u in self.res_units:
            x = u(x)
        return x


class SemanticEncoder(nn.Module):
    """Teacher features [B, H, F] -> [B, H, F]: conv3 (no bias), two blocks."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv = nn.Conv1d(ch, ch, 3, padding=1, bias=False)
        self.conv_blocks = nn.ModuleList(SemanticEncoderBlock(ch) for _ in range(2))

    def forward(self, x):
        x = self.conv(x)
        for b in self.conv_blocks:
            x = b(x)
        return x


class SemanticDecoder(nn.Module):
    """Quantized semantic latent [B, H, F] -> teacher features [B, H, F] (training only)."""

    def __init__(self, ch: int):
        super().__init__()
        self.conv1 = nn.Conv1d(ch, ch, 3, padding=1, bias=False)
        self.conv_blocks = nn.ModuleList(SemanticDecoderBlock(ch) for _ in range(2))
        self.conv2 = nn.Conv1d(ch, ch, 3, padding=1, bias=False)

    def forward(self, x):
        x = self.conv1(x)
        for b in self.conv_blocks:
            x = b(x)
        return self.conv2(x)
