"""Audio I/O: any file in, float32 mono at the rate you ask for.

soundfile (libsndfile) reads wav/flac/ogg/mp3 directly and in blocks; anything
it cannot open (m4a, opus in some containers, odd codecs) goes through an
ffmpeg subprocess that streams raw float32 PCM. Both paths resample block by
block with soxr's streaming resampler, so a long file costs one copy of the
output, not several copies of the decoded input.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

BLOCK_SECONDS = 30.0


class AudioError(Exception):
    """A file that cannot be used as audio: unreadable, empty, truncated, not audio."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


@dataclass(frozen=True)
class AudioInfo:
    sample_rate: int
    channels: int
    frames: int
    codec: str  # e.g. "WAV/PCM_16", "FLAC/PCM_16", "ffmpeg/aac"

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate


def _ffprobe(path: Path) -> AudioInfo:
    if shutil.which("ffprobe") is None:
        raise AudioError(path, "unsupported format (soundfile cannot read it and ffmpeg is not installed)")
    proc = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries",
         "stream=sample_rate,channels,codec_name,duration:format=duration", "-of", "json", str(path)],
        capture_output=True, text=True)
    try:
        meta = json.loads(proc.stdout or "{}")
        stream = meta["streams"][0]
    except (ValueError, KeyError, IndexError):
        raise AudioError(path, "not an audio file (no decodable audio stream)") from None
    sr = int(stream.get("sample_rate") or 0)
    dur = float(stream.get("duration") or meta.get("format", {}).get("duration") or 0.0)
    if sr <= 0:
        raise AudioError(path, "not an audio file (no sample rate)")
    return AudioInfo(sr, int(stream.get("channels") or 1), int(round(dur * sr)), f"ffmpeg/{stream.get('codec_name')}")


def audio_info(path) -> AudioInfo:
    """Sample rate, channels, length and codec, without decoding the audio."""
    path = Path(path)
    _check_file(path)
    try:
        i = sf.info(str(path))
        return AudioInfo(i.samplerate, i.channels, i.frames, f"{i.format}/{i.subtype}")
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return _ffprobe(path)


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file")


def _sf_blocks(path: Path, block: int) -> Iterator[tuple[np.ndarray, int]]:
    with sf.SoundFile(str(path)) as f:
        while True:
            data = f.read(block, dtype="float32", always_2d=True)
            if len(data) == 0:
                break
            yield data.mean(axis=1), f.samplerate


def _ffmpeg_blocks(path: Path, info: AudioInfo, block: int) -> Iterator[tuple[np.ndarray, int]]:
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0",
           "-ac", "1", "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        nbytes = block * 4
        while True:
            buf = proc.stdout.read(nbytes)
            if not buf:
                break
            usable = len(buf) - len(buf) % 4
            yield np.frombuffer(buf[:usable], dtype=np.float32).copy(), info.sample_rate
        err = proc.stderr.read().decode(errors="replace").strip()
        if proc.wait() != 0:
            raise AudioError(path, f"ffmpeg failed to decode: {err.splitlines()[-1] if err else 'unknown error'}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def iter_audio(path, sample_rate: int | None = None, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Stream a file as float32 mono blocks, resampled to `sample_rate` (None: native rate).

    Raises AudioError for anything that is not usable audio (checked before the
    first block is yielded where possible; a file truncated mid-stream raises
    when the damage is reached).
    """
    path = Path(path)
    info = audio_info(path)
    block = max(1, int(block_seconds * info.sample_rate))
    blocks = (_sf_blocks(path, block) if not info.codec.startswith("ffmpeg/")
              else _ffmpeg_blocks(path, info, block))
    resampler = None
    if sample_rate is not None and sample_rate != info.sample_rate:
        resampler = soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    try:
        for data, _ in blocks:
            if resampler is not None:
                data = resampler.resample_chunk(data, last=False)
            if len(data):
                yield data
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield tail
    except sf.LibsndfileError as e:
        raise AudioError(path, f"corrupt or truncated audio: {e}") from None


def load_audio(path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Whole file as float32 mono at `sample_rate` (None: native). Returns (wav, rate)."""
    path = Path(path)
    info = audio_info(path)
    out_sr = sample_rate or info.sample_rate
    # Preallocate from the header's length so peak memory is ~one output copy.
    expected = int(np.ceil(info.frames * out_sr / info.sample_rate)) + out_sr
    out = np.empty(expected, dtype=np.float32)
    n = 0
    for block in iter_audio(path, sample_rate):
        if n + len(block) > len(out):
            out = np.concatenate([out[:n], np.empty(max(len(block), len(out) // 2), np.float32)])
        out[n:n + len(block)] = block
        n += len(block)
    if n == 0:
        raise AudioError(path, "no audio samples (empty or truncated)")
    wav = out[:n].copy() if n < len(out) // 2 else out[:n]
    if not np.isfinite(wav).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    return wav, out_sr


def load_segment(path, start: float, end: float, sample_rate: int | None = None) -> np.ndarray:
    """Samples in [start, end) seconds, float32 mono at `sample_rate`; seeks where the format allows."""
    path = Path(path)
    info = audio_info(path)
    if not info.codec.startswith("ffmpeg/"):
        a, b = int(round(start * info.sample_rate)), int(round(end * info.sample_rate))
        with sf.SoundFile(str(path)) as f:
            f.seek(min(a, info.frames))
            data = f.read(max(0, b - a), dtype="float32", always_2d=True).mean(axis=1)
        if sample_rate and sample_rate != info.sample_rate:
            data = soxr.resample(data, info.sample_rate, sample_rate, quality="HQ").astype(np.float32)
        return data
    wav, sr = load_audio(path, sample_rate)
    return wav[int(round(start * sr)):int(round(end * sr))]


_SF_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


def save_audio(path, wav: np.ndarray, sample_rate: int) -> Path:
    """Write mono float audio; format from the extension (wav, flac, ogg, mp3, opus, m4a).

    Written to a temporary name in the same folder and renamed when whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
    ext = path.suffix.lower()
    tmp = path.with_name(f".{path.name}.tmp{ext}")
    if ext in _SF_FORMATS:
        fmt, sub = _SF_FORMATS[ext]
        sf.write(str(tmp), wav, sample_rate, format=fmt, subtype=sub)
    else:
        if shutil.which("ffmpeg") is None:
            raise AudioError(path, f"writing {ext} needs ffmpeg, which is not installed")
        proc = subprocess.run(
            ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "f32le", "-ar", str(sample_rate), "-ac", "1",
             "-i", "-", str(tmp)], input=wav.tobytes(), capture_output=True)
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise AudioError(path, f"ffmpeg could not write {ext}: {proc.stderr.decode(errors='replace')[-300:]}")
    tmp.replace(path)
    return path
