"""Does a codec decode its codes? Measurements that tell a working codec from one that
turns every input into the same buzz (the demo codec does), shared by the tests and the reports.

All take a tokenizer with encode(wav, sr) -> codes [B, 8, F] and decode(codes) -> [B, 1, F*hop]
(AudioTokenizer), and 1-D float waveforms at the tokenizer's sample rate.
"""
from __future__ import annotations

import math

import numpy as np
import torch

HOP = 960


def reconstruct(tok, wav: np.ndarray, sample_rate: int = 24000) -> np.ndarray:
    """wav [T] -> decode(encode(wav)) [T]."""
    x = torch.as_tensor(np.asarray(wav, np.float32))[None]
    with torch.no_grad():
        y = tok.decode(tok.encode(x, sample_rate))[0, 0, :len(wav)]
    return y.float().cpu().numpy()


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation, sample by sample, over the common length."""
    n = min(len(a), len(b))
    a, b = a[:n] - a[:n].mean(), b[:n] - b[:n].mean()
    return float((a * b).sum() / max(np.sqrt((a * a).sum() * (b * b).sum()), 1e-12))


def periodic_share(y: np.ndarray, period: int = HOP) -> float:
    """Fraction of y's variance explained by one waveform repeating every `period` samples
    (the mean frame). Speech: a few %; the collapsed codec: > 99 %."""
    n = len(y) // period
    frames = y[:n * period].reshape(n, period)
    frames = frames - frames.mean()
    template = frames.mean(0, keepdims=True)
    return float(1 - ((frames - template) ** 2).sum() / max((frames ** 2).sum(), 1e-12))


def median_f0(wav: np.ndarray, sample_rate: int = 24000) -> float:
    """Median F0 (Hz) over voiced frames, by pYIN at 16 kHz (50-500 Hz); nan if nothing is voiced."""
    import librosa
    import soxr

    x = soxr.resample(np.asarray(wav, np.float32), sample_rate, 16000)
    f0, voiced, _ = librosa.pyin(x, fmin=50.0, fmax=500.0, sr=16000, frame_length=1024, hop_length=320)
    f0 = f0[voiced & np.isfinite(f0)]
    return float(np.median(f0)) if len(f0) else math.nan


def semitones(f_a: float, f_b: float) -> float:
    """|12 log2(f_a / f_b)|; inf when either is missing."""
    if not (f_a > 0 and f_b > 0):
        return math.inf
    return abs(12 * math.log2(f_a / f_b))


def random_codes_differ(tok, n_frames: int = 50, seed: int = 0) -> float:
    """Correlation between the audio decoded from two independent uniformly random code
    sequences (a decoder that ignores its codes gives ~1)."""
    g = torch.Generator().manual_seed(seed)
    codes = torch.randint(0, tok.codebook_size, (2, tok.n_codebooks, n_frames), generator=g)
    with torch.no_grad():
        y = tok.decode(codes)[:, 0].float().cpu().numpy()
    return correlation(y[0], y[1])


def report(tok, voices: dict[str, np.ndarray], sample_rate: int = 24000) -> dict:
    """{voice: {f0, f0_recon, semitones, periodic}}, plus the worst cross-voice correlation
    ("cross_corr", over pairs of different voices) and the random-codes correlation."""
    recon = {k: reconstruct(tok, w, sample_rate) for k, w in voices.items()}
    out = {}
    for k, w in voices.items():
        f, fr = median_f0(w, sample_rate), median_f0(recon[k], sample_rate)
        out[k] = {"f0": f, "f0_recon": fr, "semitones": semitones(fr, f), "periodic": periodic_share(recon[k])}
    names = list(voices)
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    out["cross_corr"] = max((abs(correlation(recon[a], recon[b])) for a, b in pairs), default=math.nan)
    out["random_codes_corr"] = random_codes_differ(tok)
    return out
