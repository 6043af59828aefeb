"""Voice activity detection with Silero VAD, loaded offline from its wheel.

The wheel's "sequence" ONNX export computes the same per-frame probabilities as
the streaming model but one ONNX call per block of 512 frames (16 s) instead of
one per 32 ms frame, carrying the LSTM state across blocks. So a file of any
length costs one block of working memory plus one float per 32 ms frame, and
runs several hundred times faster than real time on one core.
"""
from __future__ import annotations

import warnings

import numpy as np
from silero_vad import load_silero_vad
from silero_vad.utils_vad import get_speech_timestamps_from_probs

from data_pipeline.stages.base import ANALYSIS_SR


class SileroVAD:
    """vad(wav16, sr) -> [(start_s, end_s), ...] sorted, non-overlapping speech regions."""

    def __init__(self, threshold: float = 0.5, min_speech_ms: int = 250, min_silence_ms: int = 100,
                 pad_ms: int = 30):
        self.threshold = threshold
        self.min_speech_ms = min_speech_ms
        self.min_silence_ms = min_silence_ms
        self.pad_ms = pad_ms
        with warnings.catch_warnings():  # the loader uses a deprecated importlib.resources call
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = load_silero_vad(sequence=True)  # ONNX file inside the silero-vad wheel: no download

    cost = 0.02

    def run(self, src) -> None:
        src.speech = self(src.audio.wav16, ANALYSIS_SR)
        if not src.speech:
            src.end("no_speech")

    def probabilities(self, wav16: np.ndarray) -> np.ndarray:
        """[ceil(T / 512)] speech probability per 32 ms frame."""
        return self.model.audio_forward(np.asarray(wav16, np.float32), sampling_rate=ANALYSIS_SR)

    def __call__(self, wav16: np.ndarray, sr: int = ANALYSIS_SR) -> list[tuple[float, float]]:
        if sr != ANALYSIS_SR:
            raise ValueError(f"SileroVAD expects {ANALYSIS_SR} Hz analysis audio, got {sr}")
        if len(wav16) == 0:
            return []
        probs = self.probabilities(wav16)
        stamps = get_speech_timestamps_from_probs(
            probs.tolist(), sampling_rate=sr, threshold=self.threshold,
            min_speech_duration_ms=self.min_speech_ms, min_silence_duration_ms=self.min_silence_ms,
            speech_pad_ms=self.pad_ms, return_seconds=False, audio_length_samples=len(wav16))
        regions: list[tuple[float, float]] = []
        for s in stamps:
            a, b = s["start"] / sr, s["end"] / sr
            if regions and a <= regions[-1][1]:  # padding can make neighbours touch: keep them disjoint
                regions[-1] = (regions[-1][0], max(b, regions[-1][1]))
            else:
                regions.append((a, b))
        return regions
