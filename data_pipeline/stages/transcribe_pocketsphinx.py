"""Offline ASR with pocketsphinx (CMU Sphinx); the US-English model ships in its wheel.

Accuracy is modest: word error rate 0.07-0.32 on real English recordings (0.23 over the four of
tests/fixtures/real_speech, benchmarks/transcription.py), ~0.7 on espeak-ng speech. It is the
default because it needs nothing but the wheel; for real corpora use transcribe=whisper with a
local model directory.

Confidence: `asr_confidence` is the mean posterior probability of the recognised words (from the
decoder's word lattice; silences and fillers left out). On the real recordings it follows the word
error rate (benchmarks/README.md). It is also all this English-only model can say about the
language: Mandarin scored 0.26-0.30 where English read or acted scored 0.55-0.83, so a segment under
`min_language_confidence` is rejected `no_english_recognised` (its language is not labelled `en`).
It cannot tell a foreign language from English it fails on: pyannote's sample conversation (English,
16 kHz, two people talking) scored 0.24 as one segment and is rejected the same way; only a language
identifier (Whisper detects the language) tells them apart.
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
                 dict: str | None = None,  # noqa: A002 - pocketsphinx's own option name
                 min_language_confidence: float = 0.45):
        self.language = language
        self.min_language_confidence = min_language_confidence
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

    def recognize(self, wav16: np.ndarray) -> tuple[str, float]:
        """(text, mean word posterior); 0.0 when no word was recognised."""
        dec = self._decoder()
        pcm = (np.clip(wav16, -1.0, 1.0) * 32767).astype("<i2")
        dec.start_utt()
        dec.process_raw(pcm.tobytes(), full_utt=True)  # whole utterance: batch cepstral mean normalisation
        dec.end_utt()
        hyp = dec.hyp()
        # seg().prob: the word's posterior in the lattice (linear; rounding lets it pass 1 a little).
        # <s>, </s>, <sil> and fillers such as [NOISE] are not words of the transcript.
        post = [min(s.prob, 1.0) for s in dec.seg() if not s.word.startswith(("<", "["))]
        return (hyp.hypstr.strip() if hyp is not None else ""), float(np.mean(post)) if post else 0.0

    def transcribe(self, clips, sr, segments: list[Segment], source_path: Path) -> list[Transcript]:
        out = []
        for wav in clips:
            wav = np.asarray(wav, np.float32).reshape(-1)
            if sr != PS_SR:
                wav = soxr.resample(wav, sr, PS_SR).astype(np.float32)
            text, conf = self.recognize(wav)
            tr = Transcript(text=text, language=self.language, scores={"asr_confidence": round(conf, 4)})
            if text and conf < self.min_language_confidence:
                tr.language, tr.rejected = "", "no_english_recognised"
                tr.detail = (f"pocketsphinx's {self.language} model recognises no {self.language} speech here "
                             f"(mean word posterior {conf:.2f} < {self.min_language_confidence})")
            out.append(tr)
        return out
