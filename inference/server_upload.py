"""Reference clips uploaded to the server: base64 -> (float32 mono, sample_rate), decoded in-process.

    wav, sr = decode_upload(b64, max_bytes=10 * 2**20, max_seconds=30.0)   # ClientError on bad input

An upload is untrusted, so it never reaches ffmpeg's demuxers (an HLS playlist would make ffmpeg
open local paths): the type is sniffed from the first bytes and only WAV, FLAC, Ogg (Vorbis/Opus)
and MP3 are accepted, then libsndfile must detect the same type and decodes it from memory. The
header's duration is checked against the byte count and max_seconds before anything is decoded
(higgs_train.audio.check_declared_length: a 3 KB WAV declaring 1 Hz is 50 minutes at 24 kHz), and
decoding stops as soon as more than max_seconds came out, whatever the header said.
"""
from __future__ import annotations

import base64
import binascii
import io

import numpy as np
import soundfile as sf
import soxr

from higgs_train.audio import AudioError, AudioInfo, check_declared_length

PARAM = "reference_audio"
ACCEPTED = "wav, flac, ogg (vorbis/opus) or mp3"
BLOCK_SECONDS = 1.0


class UploadError(ValueError):
    """A reference clip the server will not decode; the message is for the client."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def sniff(raw: bytes) -> str | None:
    """The container named by the first bytes (libsndfile's format names), or None."""
    if raw[:4] in (b"RIFF", b"RF64") and raw[8:12] == b"WAVE":
        return "WAV"
    if raw[:4] == b"fLaC":
        return "FLAC"
    if raw[:4] == b"OggS":
        return "OGG"
    if raw[:3] == b"ID3" or (len(raw) > 1 and raw[0] == 0xFF and raw[1] & 0xE0 == 0xE0):   # tag or frame sync
        return "MP3"
    return None


def decode_upload(b64: str, max_bytes: int, max_seconds: float, sample_rate: int = 24000) -> tuple[np.ndarray, int]:
    """A base64 audio file (optionally a data: URL) -> (wav float32 mono at sample_rate, sample_rate)."""
    if b64.startswith("data:"):
        b64 = b64.split(",", 1)[-1]
    if len(b64) * 3 // 4 > max_bytes:
        raise UploadError(f"reference_audio is larger than {max_bytes / 2**20:g} MB", 413)
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise UploadError("reference_audio is not valid base64") from None
    kind = sniff(raw)
    if kind is None:
        raise UploadError(f"reference_audio is not a supported audio file: send {ACCEPTED}")
    try:
        with sf.SoundFile(io.BytesIO(raw)) as f:
            if f.format.replace("WAVEX", "WAV").replace("RF64", "WAV") != kind:
                raise UploadError(f"reference_audio starts like {kind} but decodes as {f.format}: send {ACCEPTED}")
            info = AudioInfo(f.samplerate, f.channels, f.frames, f"{f.format}/{f.subtype}")
            check_declared_length(PARAM, info, len(raw), max_seconds)
            wav = _read(f, kind, max_seconds)
    except AudioError as e:
        raise UploadError(f"reference_audio refused: {e.reason}") from None
    except (sf.LibsndfileError, RuntimeError) as e:
        raise UploadError(f"reference_audio could not be decoded: {e}") from None
    if len(wav) == 0:
        raise UploadError("reference_audio holds no samples")
    if not np.isfinite(wav).all():
        raise UploadError("reference_audio contains NaN or infinite samples")
    if info.sample_rate != sample_rate:
        wav = soxr.resample(wav, info.sample_rate, sample_rate, quality="HQ").astype(np.float32)
    return wav, sample_rate


def _read(f: sf.SoundFile, kind: str, max_seconds: float) -> np.ndarray:
    """Mono float32 at the file's rate; stops (UploadError) once more than max_seconds came out.
    MP3 is read in one call: libsndfile's MP3 decoder garbles the seams of block reads."""
    limit = int(max_seconds * f.samplerate) + 1
    block = limit if kind == "MP3" else max(1, int(BLOCK_SECONDS * f.samplerate))
    parts, n = [], 0
    while True:
        data = f.read(block, dtype="float32", always_2d=True)
        if not len(data):
            break
        parts.append(data.mean(axis=1))
        n += len(data)
        if n > limit:
            raise UploadError(f"reference_audio is longer than {max_seconds:g} s")
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)
