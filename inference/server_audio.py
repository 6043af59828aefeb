"""The speech server's audio out: encodings of a response (wav, flac, mp3, pcm), the open-ended
WAV header of a stream, and the speed change (tempo without pitch)."""
from __future__ import annotations

import io
import struct
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from higgs_train.audio import save_audio

MEDIA = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "pcm": "audio/pcm"}


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def wav_stream_header(sample_rate: int) -> bytes:
    """A 16-bit mono WAV header whose sizes say 'unknown' (0xFFFFFFFF), as streaming servers send."""
    return (b"RIFF" + struct.pack("<I", 0xFFFFFFFF) + b"WAVEfmt " +
            struct.pack("<IHHIIHH", 16, 1, 1, sample_rate, sample_rate * 2, 2, 16) +
            b"data" + struct.pack("<I", 0xFFFFFFFF))


def encode_audio(audio: np.ndarray, sample_rate: int, fmt: str) -> bytes:
    if fmt == "pcm":
        return pcm16(audio)
    if fmt == "wav":   # 16-bit like OpenAI's
        buf = io.BytesIO()
        import soundfile as sf
        sf.write(buf, audio, sample_rate, format="WAV", subtype="PCM_16")
        return buf.getvalue()
    with tempfile.TemporaryDirectory() as d:   # flac, mp3: the project's writer (ffmpeg for mp3)
        return save_audio(Path(d) / f"out.{fmt}", audio, sample_rate).read_bytes()


def change_speed(audio: np.ndarray, sample_rate: int, speed: float) -> np.ndarray:
    """Tempo change without a pitch change (ffmpeg atempo; one stage takes 0.5-2.0, so chain them)."""
    stages, left = [], speed
    while left > 2.0 or left < 0.5:
        stages.append(2.0 if left > 2.0 else 0.5)
        left /= stages[-1]
    stages.append(left)
    proc = subprocess.run(["ffmpeg", "-v", "error", "-nostdin", "-f", "f32le", "-ar", str(sample_rate), "-ac", "1",
                           "-i", "-", "-filter:a", ",".join(f"atempo={s:.6f}" for s in stages), "-f", "f32le", "-"],
                          input=np.asarray(audio, np.float32).tobytes(), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg atempo failed: {proc.stderr.decode(errors='replace')[-300:]}")
    return np.frombuffer(proc.stdout, np.float32).copy()
