"""Audio I/O: any file in, float32 mono at the rate you ask for.

soundfile (libsndfile) reads wav/flac/ogg/mp3 directly and in blocks; anything
it cannot open (m4a, opus in some containers, odd codecs) goes through an
ffmpeg subprocess that streams raw float32 PCM. Both paths resample block by
block with soxr's streaming resampler, so a long file costs one copy of the
output, not several copies of the decoded input.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
import soxr

from higgs_train.files import atomic_path

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
    exact_length: bool = True  # False: `frames` estimated from the container, not the audio stream

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
    exact = stream.get("duration") not in (None, "N/A")
    try:
        dur = float(stream["duration"] if exact else meta.get("format", {}).get("duration") or 0.0)
    except ValueError:
        dur, exact = 0.0, False
    if sr <= 0:
        raise AudioError(path, "not an audio file (no sample rate)")
    return AudioInfo(sr, int(stream.get("channels") or 1), int(round(dur * sr)),
                     f"ffmpeg/{stream.get('codec_name')}", exact)


def audio_info(path) -> AudioInfo:
    """Sample rate, channels, length and codec, without decoding the audio."""
    path = Path(path)
    _check_file(path)
    try:
        i = sf.info(os.fsencode(path))
        return AudioInfo(i.samplerate, i.channels, i.frames, f"{i.format}/{i.subtype}")
    except (sf.LibsndfileError, RuntimeError, TypeError):
        return _ffprobe(path)


# Real codecs spend far more than this on speech (Opus's floor is ~750 B/s): a header declaring a
# long duration in a few bytes (a 1 Hz WAV, a tiny "hours long" FLAC) is a decompression bomb.
MIN_BYTES_PER_SECOND = 100


def check_declared_length(path, info: AudioInfo, nbytes: int, max_seconds: float | None = None) -> None:
    """Refuse, before decoding, a header whose duration the bytes cannot plausibly hold (under
    MIN_BYTES_PER_SECOND) or that exceeds max_seconds; raises AudioError naming the figures."""
    if info.duration > 0 and nbytes / info.duration < MIN_BYTES_PER_SECOND:
        raise AudioError(path, f"header declares {info.duration:.1f} s at {info.sample_rate} Hz in {nbytes} bytes "
                               f"(under {MIN_BYTES_PER_SECOND} bytes per second): not plausible audio")
    if max_seconds is not None and info.duration > max_seconds:
        raise AudioError(path, f"header declares {info.duration:.1f} s, more than the {max_seconds:g} s allowed")


# soundfile is given the path as bytes (os.fsencode): it encodes a str path strictly, so a file
# name that is not valid UTF-8 (held by Python as surrogate escapes) would raise UnicodeEncodeError.


def _check_file(path: Path) -> None:
    if not path.is_file():
        raise AudioError(path, "file not found")
    if path.stat().st_size == 0:
        raise AudioError(path, "empty file")


def _wav_truncated(path: Path) -> bool:
    """True when a RIFF/WAVE data chunk declares more bytes than the file holds.

    libsndfile silently shortens such files to what is there, so a cut-off
    download would otherwise load as a valid, shorter recording. Placeholder
    sizes written by streaming writers (0xFFFFFFFF, 0x7FFFF000) mean "unknown".
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return False
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            ck = f.read(8)
            n = int.from_bytes(ck[4:8], "little")
            if ck[:4] == b"data":
                return n < 0x7FFF0000 and pos + 8 + n > size
            pos += 8 + n + (n & 1)
    return False


def _via_ffmpeg(info: AudioInfo) -> bool:
    # libsndfile 1.2's MP3 decoder garbles audio at the boundary of every read
    # call (mpg123 "part2_3_length too large"), so block reads of MP3 go through
    # ffmpeg; audio_info still takes libsndfile's exact, gapless frame count.
    return info.codec.startswith("ffmpeg/") or (info.codec.startswith("MP3/") and shutil.which("ffmpeg") is not None)


def _sf_blocks(path: Path, block: int) -> Iterator[tuple[np.ndarray, int]]:
    with sf.SoundFile(os.fsencode(path)) as f:
        while True:
            data = f.read(block, dtype="float32", always_2d=True)
            if len(data) == 0:
                break
            yield data.mean(axis=1), f.samplerate


def _ffmpeg_blocks(path: Path, info: AudioInfo, block: int) -> Iterator[tuple[np.ndarray, int]]:
    # -ar pins the output to the rate we report (e.g. HE-AAC may decode at 2x its core rate).
    cmd = ["ffmpeg", "-v", "error", "-nostdin", "-i", str(path), "-map", "0:a:0",
           "-ac", "1", "-ar", str(info.sample_rate), "-f", "f32le", "-acodec", "pcm_f32le", "-"]
    # stderr goes to a file, not a pipe: a pipe nobody reads fills up (64 KiB of
    # decode errors) and deadlocks ffmpeg while we wait on stdout.
    with tempfile.TemporaryFile() as errf:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=errf)
        try:
            # ffmpeg (5.x) does not drop the encoder padding at the end of AAC in
            # MP4, so output stops at the stream's declared length, unless the
            # audio runs on well past it (then the declared length was wrong).
            limit = info.frames if info.exact_length and info.frames > 0 else None
            slack = int(0.1 * info.sample_rate)
            held, n = [], 0
            nbytes = block * 4
            pending = b""
            while True:
                buf = proc.stdout.read(nbytes)
                if not buf:
                    break
                buf = pending + buf
                usable = len(buf) - len(buf) % 4
                pending = buf[usable:]
                data = np.frombuffer(buf[:usable], dtype=np.float32).copy()
                if limit is not None:
                    keep = max(0, min(len(data), limit - n))
                    if keep < len(data):
                        held.append(data[keep:])
                        data = data[:keep]
                        if sum(len(h) for h in held) > slack:  # real audio, not padding
                            data = np.concatenate([data, *held])
                            held, limit = [], None
                n += len(data)
                if len(data):
                    yield data, info.sample_rate
            if proc.wait() != 0:
                errf.seek(0)
                err = errf.read().decode(errors="replace").strip()
                raise AudioError(path, f"ffmpeg failed to decode: {err.splitlines()[-1] if err else 'unknown error'}")
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.stdout.close()


def iter_audio(path, sample_rate: int | None = None, block_seconds: float = BLOCK_SECONDS) -> Iterator[np.ndarray]:
    """Stream a file as float32 mono blocks, resampled to `sample_rate` (None: native rate).

    Raises AudioError for anything that is not usable audio (checked before the
    first block is yielded where possible; a file truncated mid-stream raises
    when the damage is reached).
    """
    path = Path(path)
    yield from _decode(path, audio_info(path), sample_rate, block_seconds)


def _decode(path: Path, info: AudioInfo, sample_rate: int | None, block_seconds: float) -> Iterator[np.ndarray]:
    if info.codec.startswith("WAV") and _wav_truncated(path):
        raise AudioError(path, "truncated WAV (data chunk shorter than its header says)")
    block = max(1, int(block_seconds * info.sample_rate))
    blocks = _ffmpeg_blocks(path, info, block) if _via_ffmpeg(info) else _sf_blocks(path, block)
    resampler = None
    if sample_rate is not None and sample_rate != info.sample_rate:
        resampler = soxr.ResampleStream(info.sample_rate, sample_rate, 1, dtype="float32", quality="HQ")
    got = 0  # input frames decoded
    try:
        for data, _ in blocks:
            got += len(data)
            if resampler is not None:
                data = resampler.resample_chunk(data, last=False)
            if len(data):
                yield data
        if got == 0:
            raise AudioError(path, "no audio samples (empty or truncated)")
        # Decoding stopped well short of the header's length: the file was cut off.
        # (The slack covers estimated lengths, e.g. MP3 without a Xing header.)
        if info.exact_length and info.frames - got > 0.01 * info.frames + 0.1 * info.sample_rate:
            raise AudioError(path, f"truncated: header says {info.duration:.2f} s, "
                                   f"only {got / info.sample_rate:.2f} s decodable")
        if resampler is not None:
            tail = resampler.resample_chunk(np.zeros(0, np.float32), last=True)
            if len(tail):
                yield tail
    except sf.LibsndfileError as e:
        raise AudioError(path, f"corrupt or truncated audio: {e}") from None
    finally:
        blocks.close()  # stops an ffmpeg child at once when the caller stops early


def load_audio(path, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Whole file as float32 mono at `sample_rate` (None: native). Returns (wav, rate)."""
    path = Path(path)
    info = audio_info(path)
    out_sr = sample_rate or info.sample_rate
    # Preallocate from the header's length so peak memory is ~one output copy
    # (capped: a corrupt header may claim days; growth handles the rest).
    expected = min(int(np.ceil(info.frames * out_sr / info.sample_rate)) + out_sr, 3600 * out_sr)
    out = np.empty(expected, dtype=np.float32)
    n = 0
    for block in _decode(path, info, sample_rate, BLOCK_SECONDS):
        if n + len(block) > len(out):
            out = np.concatenate([out[:n], np.empty(max(len(block), len(out) // 2), np.float32)])
        out[n:n + len(block)] = block
        n += len(block)
    wav = out[:n].copy() if n < len(out) // 2 else out[:n]
    if not np.isfinite(wav).all():
        raise AudioError(path, "audio contains NaN or infinite samples")
    return wav, out_sr


def load_segment(path, start: float, end: float, sample_rate: int | None = None) -> np.ndarray:
    """Samples in [start, end) seconds, float32 mono at `sample_rate`; seeks where the format allows."""
    path = Path(path)
    info = audio_info(path)
    start, end = max(0.0, start), max(start, end)
    if not _via_ffmpeg(info):
        sr_in = info.sample_rate
        resample = bool(sample_rate) and sample_rate != sr_in
        # When resampling, read a margin either side so the filter has context and
        # the edges match a slice of the whole resampled file.
        margin = int(0.05 * sr_in) if resample else 0
        a, b = int(round(start * sr_in)), int(round(end * sr_in))
        a0 = max(0, min(a - margin, info.frames))
        try:
            with sf.SoundFile(os.fsencode(path)) as f:
                f.seek(a0)
                data = f.read(max(0, b + margin - a0), dtype="float32", always_2d=True).mean(axis=1)
        except sf.LibsndfileError as e:
            raise AudioError(path, f"corrupt or truncated audio: {e}") from None
        if not resample:
            return data
        data = soxr.resample(data, sr_in, sample_rate, quality="HQ").astype(np.float32)
        skip = int(round(start * sample_rate)) - int(round(a0 * sample_rate / sr_in))
        return data[skip:skip + int(round(end * sample_rate)) - int(round(start * sample_rate))]
    # ffmpeg cannot seek sample-exactly in every format (nor MP3 after its bit
    # reservoir): decode as a stream and keep only the wanted span (memory: the
    # segment, not the file; time: up to `end`).
    sr = sample_rate or info.sample_rate
    a, b = int(round(start * sr)), int(round(end * sr))
    parts, pos = [], 0
    for block in _decode(path, info, sample_rate, BLOCK_SECONDS):
        if pos + len(block) > a:
            parts.append(block[max(0, a - pos):max(0, b - pos)])
        pos += len(block)
        if pos >= b:
            break
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


_SF_FORMATS = {".wav": ("WAV", "PCM_16"), ".flac": ("FLAC", "PCM_16"), ".ogg": ("OGG", "VORBIS")}


def save_audio(path, wav: np.ndarray, sample_rate: int) -> Path:
    """Write mono float audio; format from the extension (wav, flac, ogg, mp3, opus, m4a).

    Written to a temporary name in the same folder and renamed when whole.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wav = np.clip(np.asarray(wav, dtype=np.float32).reshape(-1), -1.0, 1.0)
    ext = path.suffix.lower()
    if ext not in _SF_FORMATS and shutil.which("ffmpeg") is None:
        raise AudioError(path, f"writing {ext} needs ffmpeg, which is not installed")
    with atomic_path(path, keep_ext=True) as tmp:
        if ext in _SF_FORMATS:
            fmt, sub = _SF_FORMATS[ext]
            # Written in blocks: libsndfile's Vorbis encoder crashes (segfault) when
            # handed ~40 s or more in one call.
            try:
                with sf.SoundFile(str(tmp), "w", sample_rate, 1, format=fmt, subtype=sub) as f:
                    for i in range(0, len(wav), 1 << 16):
                        f.write(wav[i:i + (1 << 16)])
            except (sf.LibsndfileError, RuntimeError, ValueError) as e:
                raise AudioError(path, f"could not write {ext}: {e}") from None
        else:
            proc = subprocess.run(
                ["ffmpeg", "-v", "error", "-nostdin", "-y", "-f", "f32le", "-ar", str(sample_rate), "-ac", "1",
                 "-i", "-", str(tmp)], input=wav.tobytes(), capture_output=True)
            if proc.returncode != 0:
                raise AudioError(path, f"ffmpeg could not write {ext}: {proc.stderr.decode(errors='replace')[-300:]}")
    return path
