"""Offline ASR with pocketsphinx (CMU Sphinx); the US-English model ships in its wheel.

Accuracy is modest (word error rate ~0.7 on espeak-ng speech, better on natural
speech); it is the default because it needs nothing but the wheel. For real corpora
use transcribe=whisper with a local model directory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soxr

from data_pipeline.stages.base import Segment, Transcript, Transcriber

PS_SR = 16_000

_DECODERS: dict = {}  # config -> Decoder, one per process, built lazily (after fork)


class PocketsphinxTranscriber(Transcriber):
    """One pocketsphinx utterance per segment. `hmm`/`lm`/`dict` point at another language's
    model files (all three together); null uses the wheel's en-us model."""

    def __init__(self, language: str = "en", hmm: str | None = None, lm: str | None = None,
                 dict: str | None = None):  # noqa: A002 - pocketsphinx's own option name
        self.language = language
        self.paths = {"hmm": hmm, "lm": lm, "dict": dict}
        given = {k: v for k, v in self.paths.items() if v}
        if given and len(given) != 3:
            raise ValueError(f"pocketsphinx needs hmm, lm and dict together; got only {sorted(given)}")
        for key, p in given.items():
            if not Path(p).exists():
                raise FileNotFoundError(f"pocketsphinx {key} not found: {p}")

    def _decoder(self):
        key = tuple(sorted((k, v or "") for k, v in self.paths.items()))
        if key not in _DECODERS:
            from pocketsphinx import Decoder

            opts = {k: v for k, v in self.paths.items() if v}
            _DECODERS[key] = Decoder(samprate=PS_SR, loglevel="FATAL", **opts)
        return _DECODERS[key]

    def recognize(self, wav16: np.ndarray) -> str:
        dec = self._decoder()
        pcm = (np.clip(wav16, -1.0, 1.0) * 32767).astype("<i2")
        dec.start_utt()
        dec.process_raw(pcm.tobytes(), full_utt=True)  # whole utterance: batch cepstral mean normalisation
        dec.end_utt()
        hyp = dec.hyp()
        return hyp.hypstr.strip() if hyp is not None else ""

    def transcribe(self, clips, sr, segments: list[Segment], source_path: Path) -> list[Transcript]:
        out = []
        for wav in clips:
            wav = np.asarray(wav, np.float32).reshape(-1)
            if sr != PS_SR:
                wav = soxr.resample(wav, sr, PS_SR).astype(np.float32)
            out.append(Transcript(text=self.recognize(wav), language=self.language))
        return out
