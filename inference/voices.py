"""Voice presets: a folder voices/NAME/ holding reference.wav and reference.txt (its transcript).

A name is a plain identifier (letters, digits, '-', '_', '.', not starting with '.'), and the
resolved folder must sit directly inside the voices folder, so no name (`../x`, `/etc`, a
symlink pointing out) ever reads a file outside it.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

NAME = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}$")
AUDIO_NAMES = ("reference.wav", "reference.flac", "reference.mp3")


class VoiceError(ValueError):
    """Unknown or invalid voice name (a client error, not a server fault)."""


@dataclass(frozen=True)
class Voice:
    name: str
    audio: Path
    text: str


class VoiceLibrary:
    def __init__(self, root: str | Path | None):
        self.root = Path(root).resolve() if root else None

    def names(self) -> list[str]:
        if self.root is None or not self.root.is_dir():
            return []
        out = []
        for d in sorted(self.root.iterdir()):
            try:
                self.get(d.name)
                out.append(d.name)
            except VoiceError:
                continue   # half-made preset folders are skipped, not fatal
        return out

    def get(self, name: str) -> Voice:
        if not isinstance(name, str) or not NAME.match(name):
            raise VoiceError(f"invalid voice name {name!r}: use letters, digits, '-', '_' and '.'")
        if self.root is None:
            raise VoiceError(f"unknown voice {name!r}: no voices folder is configured")
        folder = (self.root / name).resolve()
        if folder.parent != self.root or not folder.is_dir():
            raise VoiceError(f"unknown voice {name!r}")
        audio = next((folder / a for a in AUDIO_NAMES if (folder / a).is_file()), None)
        text = folder / "reference.txt"
        if audio is None or not text.is_file():
            raise VoiceError(f"voice {name!r} lacks reference.wav or reference.txt")
        for f in (audio, text):
            if f.resolve().parent != folder:   # a symlinked file pointing elsewhere
                raise VoiceError(f"voice {name!r} points outside the voices folder")
        return Voice(name, audio, text.read_text(encoding="utf-8").strip())

    def add(self, name: str, wav, sample_rate: int, text: str) -> Voice:
        """Write a preset (used by fine-tuning and tests)."""
        from higgs_train.audio import save_audio

        if not NAME.match(name) or self.root is None:
            raise VoiceError(f"invalid voice name {name!r}")
        folder = self.root / name
        folder.mkdir(parents=True, exist_ok=True)
        save_audio(folder / "reference.wav", wav, sample_rate)
        (folder / "reference.txt").write_text(text.strip() + "\n", encoding="utf-8")
        return self.get(name)
