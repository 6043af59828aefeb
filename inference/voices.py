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
    """Presets in one voices folder, or in several searched in order (the first that holds a name
    wins): the CLI and the server look in voices_dir, then in the model export's voices/ folder,
    where fine-tuning puts the preset of its voice."""

    def __init__(self, root: str | Path | None | list):
        roots = root if isinstance(root, (list, tuple)) else [root]
        self.roots = [Path(r).resolve() for r in roots if r]

    @property
    def root(self) -> Path | None:
        """The first folder: where add() writes."""
        return self.roots[0] if self.roots else None

    def names(self) -> list[str]:
        out = set()
        for root in self.roots:
            if not root.is_dir():
                continue
            for d in root.iterdir():
                try:
                    self.get(d.name)
                    out.add(d.name)
                except VoiceError:
                    continue   # half-made preset folders are skipped, not fatal
        return sorted(out)

    def get(self, name: str) -> Voice:
        if not isinstance(name, str) or not NAME.match(name):
            raise VoiceError(f"invalid voice name {name!r}: use letters, digits, '-', '_' and '.'")
        if not self.roots:
            raise VoiceError(f"unknown voice {name!r}: no voices folder is configured")
        for root in self.roots:
            folder = (root / name).resolve()
            if folder.parent == root and folder.is_dir():
                return self._load(name, folder)
        raise VoiceError(f"unknown voice {name!r}")

    @staticmethod
    def _load(name: str, folder: Path) -> Voice:
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
