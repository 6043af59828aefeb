"""A request's voice: its reference clip encoded to codes, or a preset looked up (inference.voices)
and encoded once, and dialogue references tagged with the speaker each one voices."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from higgs_train.families import Reference
from inference.request import Request, RequestError
from inference.text import speaker_ids
from inference.voices import VoiceError, VoiceLibrary


class References:
    """Reference prompts through one audio tokenizer; presets are encoded once and kept."""

    def __init__(self, codec, voices: VoiceLibrary, max_seconds: float):
        self.codec, self.voices, self.max_seconds = codec, voices, max_seconds
        self._presets: dict[str, Reference] = {}

    def encode(self, audio, text: str) -> Reference:
        """audio: a path, or (wav float32 mono, sample_rate); text: its transcript."""
        from higgs_train.audio import AudioError, load_audio

        try:
            wav, sr = load_audio(audio, self.codec.sample_rate) if isinstance(audio, (str, Path)) else audio
        except AudioError as e:
            raise RequestError(f"reference audio: {e}") from None
        wav = np.asarray(wav, np.float32).reshape(-1)
        if len(wav) == 0 or not text or not text.strip():
            raise RequestError("a reference needs non-empty audio and its transcript")
        if len(wav) > self.max_seconds * sr:
            raise RequestError(f"reference audio longer than {self.max_seconds:g} s")
        codes = self.codec.encode(torch.from_numpy(wav)[None], sr)[0].cpu()          # [K, F]
        return Reference(" ".join(text.split()), codes)

    def voice(self, name: str) -> Reference:
        if name not in self._presets:
            v = self.voices.get(name)
            self._presets[name] = self.encode(v.audio, v.text)
        return self._presets[name]

    def for_request(self, req: Request) -> list[Reference]:
        """The request's references: its clip, or its presets ("a,b": one per speaker), or none."""
        if req.reference_audio is not None:
            if req.voice:
                raise RequestError("give either voice or reference_audio, not both")
            refs = [self.encode(req.reference_audio, req.reference_text or "")]
        elif req.voice:
            try:
                refs = [self.voice(n.strip()) for n in req.voice.split(",")]
            except VoiceError as e:
                raise RequestError(str(e)) from None
        else:
            return []
        if len(refs) > 1 or speaker_ids(req.text):   # dialogue: reference i speaks as [SPEAKERi]
            refs = [Reference(f"[SPEAKER{i}] {r.text}", r.codes) for i, r in enumerate(refs)]
        return refs
