"""Scorers of the evaluation harness (higgs_train.evaluate), built on the curation stages' models.

Each is called as scorer(audio, sr, item) -> {metric: value} (configs/recipes/evaluate/scorers/*.yaml):

    WERScorer          wer = word error rate of an ASR transcript against item.text (asr_text: the
                       transcript); the ASR is any transcription stage (pocketsphinx, whisper)
    SpeakerSimilarity  sim_<name> = cosine of resemblyzer embeddings between the output and each of
                       item.speakers (the mean embedding of that speaker's clips)
    DNSMOSScorer       dnsmos_ovrl = DNSMOS P.835 overall MOS (1..5) of the output (quality stage)
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import soxr

from data_pipeline.stages.base import ANALYSIS_SR, Segment
from data_pipeline.stages.transcribe import word_error_rate


class WERScorer:
    def __init__(self, asr):
        self.asr = asr   # a transcription stage: .transcribe(clips, sr, segments, source_path)

    def __call__(self, audio: np.ndarray, sr: int, item) -> dict:
        seg = Segment(0.0, len(audio) / sr, "S0")
        [t] = self.asr.transcribe([audio], sr, [seg], Path(str(item.id)))
        return {"wer": round(word_error_rate(item.text, t.text), 4), "asr_text": t.text}


class SpeakerSimilarity:
    """Resemblyzer's VoiceEncoder (weights inside its wheel, as the diarization stage loads them).
    An utterance's embedding is resemblyzer's own: volume-normalised, long silences trimmed,
    1.6 s partial windows averaged. Reference embeddings are cached per file."""

    def __init__(self, device: str = "cpu"):
        import warnings

        with warnings.catch_warnings():  # resemblyzer imports a deprecated scipy.ndimage path
            warnings.simplefilter("ignore", DeprecationWarning)
            from resemblyzer import VoiceEncoder

        self.encoder = VoiceEncoder(device, verbose=False).eval()
        self._refs: dict[str, np.ndarray] = {}

    def embed(self, wav: np.ndarray, sr: int) -> np.ndarray | None:
        """[256] L2-normed, or None for audio with no speech to embed."""
        from resemblyzer import preprocess_wav

        wav = np.asarray(wav, np.float32).reshape(-1)
        if sr != ANALYSIS_SR:
            wav = soxr.resample(wav, sr, ANALYSIS_SR).astype(np.float32)
        if len(wav) < ANALYSIS_SR // 10 or not np.any(wav):
            return None
        trimmed = preprocess_wav(wav, ANALYSIS_SR)
        # all trimmed away (no voiced frames): embed the normalised audio as it is
        wav = trimmed if len(trimmed) >= ANALYSIS_SR // 10 else wav / max(float(np.abs(wav).max()), 1e-6)
        return self.encoder.embed_utterance(wav)

    def reference(self, paths: list[Path]) -> np.ndarray:
        from higgs_train.audio import load_audio

        embs = []
        for p in paths:
            key = str(Path(p).resolve())
            if key not in self._refs:
                e = self.embed(*load_audio(p, ANALYSIS_SR))
                if e is None:
                    raise ValueError(f"no speech to embed in reference {p}")
                self._refs[key] = e
            embs.append(self._refs[key])
        m = np.mean(embs, axis=0)
        return m / np.linalg.norm(m)

    def similarity(self, a: np.ndarray, sr_a: int, b: np.ndarray, sr_b: int) -> float:
        ea, eb = self.embed(a, sr_a), self.embed(b, sr_b)
        return math.nan if ea is None or eb is None else float(ea @ eb)

    def __call__(self, audio: np.ndarray, sr: int, item) -> dict:
        if not item.speakers:
            return {}
        e = self.embed(audio, sr)
        return {f"sim_{name}": math.nan if e is None else round(float(e @ self.reference(paths)), 4)
                for name, paths in item.speakers.items()}


class DNSMOSScorer:
    def __init__(self, dnsmos):
        self.dnsmos = dnsmos   # data_pipeline.stages.quality.DNSMOS, the curation's quality metric

    def __call__(self, audio: np.ndarray, sr: int, item) -> dict:
        return {"dnsmos_ovrl": round(float(self.dnsmos.dnsmos([audio], sr)[0, 2]), 4)}
