"""Mel spectrogram plots of originals vs reconstructions (validation examples)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
import torchaudio  # noqa: E402


def mel_figure(orig: torch.Tensor, recon: torch.Tensor, sample_rate: int):
    """orig, recon [N, T] -> a figure with N rows x (original, reconstruction) log-mel panels."""
    mel = torchaudio.transforms.MelSpectrogram(sample_rate, n_fft=1024, hop_length=256, n_mels=80)
    n = orig.shape[0]
    fig, axes = plt.subplots(n, 2, figsize=(10, 2.2 * n), squeeze=False)
    for i in range(n):
        for j, (x, title) in enumerate(((orig[i], "original"), (recon[i], "reconstruction"))):
            axes[i, j].imshow(mel(x).clamp(min=1e-5).log10().numpy(), origin="lower", aspect="auto")
            axes[i, j].set_title(f"{i}: {title}", fontsize=8)
            axes[i, j].axis("off")
    fig.tight_layout()
    return fig
