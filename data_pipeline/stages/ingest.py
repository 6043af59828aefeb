"""Ingest: find the input files and decode each one exactly once.

One pass over the decoded blocks produces everything later stages need:
  - a 16 kHz mono float32 analysis copy, in memory (2 h of audio = 460 MB),
  - a 24 kHz mono float32 copy in a temp file, read clip by clip for scoring
    and export, so a multi-hour file never sits in memory at 24 kHz as well,
  - the sha1 of the decoded native-rate PCM (duplicate detection: the same
    audio copied, or re-encoded losslessly into another container).
"""
from __future__ import annotations

import errno
import fnmatch
import hashlib
import os
import re
import socket
import stat
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from data_pipeline.stages.base import ANALYSIS_SR
from higgs_train.audio import AudioError, audio_info, check_declared_length, iter_audio
from higgs_train.shards import SAMPLE_RATE as EXPORT_SR

# Containers whose header frame count is exact: decoding much less than it means the file is cut.
_EXACT_LENGTH = ("WAV", "WAVEX", "FLAC", "AIFF", "W64", "RF64", "CAF", "OGG")


def source_key(rel: str) -> str:
    """A WebDataset-safe, readable, unique key for a source: slug of its path + 8 hex of its hash
    (of the name's bytes: a name that is not UTF-8 has surrogate escapes, PEP 383)."""
    slug = re.sub(r"[^A-Za-z0-9_-]+", "-", rel).strip("-")[-48:]
    return f"{slug}-{hashlib.sha1(rel.encode('utf-8', 'surrogateescape')).hexdigest()[:8]}"


@dataclass
class Decoded:
    wav16: np.ndarray   # [T16] float32, ANALYSIS_SR
    path24: Path        # raw float32 samples at EXPORT_SR (temp file; caller deletes)
    n24: int
    sha1: str
    sample_rate: int
    channels: int
    codec: str
    duration: float     # seconds actually decoded

    def read24(self, start: float, end: float) -> np.ndarray:
        """[T] float32 samples of the 24 kHz copy in [start, end) seconds. A plain read, not a memory
        map: mapped pages would stay resident (and counted) until the file is gone."""
        a = min(self.n24, max(0, int(round(start * EXPORT_SR))))
        b = min(self.n24, max(a, int(round(end * EXPORT_SR))))
        with open(self.path24, "rb") as f:
            f.seek(a * 4)
            return np.fromfile(f, np.float32, b - a)

    def cleanup(self) -> None:
        self.path24.unlink(missing_ok=True)


def _check_input(path: Path) -> None:
    """The reasons audio_info would blur into "file not found" / "not an audio file". A file we may
    not read raises PermissionError (an OSError: retried by the next run, when it may be fixed)."""
    try:
        st = os.stat(path)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise AudioError(path, "symbolic link loop") from None
        if os.path.islink(path):
            raise AudioError(path, "broken symbolic link (its target does not exist)") from None
        raise AudioError(path, f"cannot stat the file: {e.strerror} (errno {e.errno})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device"}.get(stat.S_IFMT(st.st_mode), "not a file")
        raise AudioError(path, f"not a regular file ({kind})")
    with open(path, "rb"):  # PermissionError here, not "not an audio file" from the decoder
        pass


class Ingest:
    """Finds the input files; decodes one (any format higgs_train.audio reads) to the analysis and
    export copies.

    ignore: globs on file names that are companions, not inputs (sidecar transcripts, hidden
    files); every other file must end up processed or rejected.
    max_seconds: longest declared duration decoded (the 16 kHz copy of an hour is 230 MB in
    memory); a header over it, or one declaring more than its bytes can hold (a 1 Hz WAV), is
    rejected before decoding.
    """

    def __init__(self, ignore: list[str] = (), max_seconds: float | None = None):
        self.ignore = list(ignore)
        self.max_seconds = max_seconds

    def list_sources(self, input_dir, exclude=None, unreadable: list | None = None) -> list[str]:
        """Every input file under `input_dir` (recursively, following links to folders once), as
        sorted POSIX paths relative to it; nothing under `exclude` (an output folder inside it).
        Folders that cannot be listed are appended to `unreadable` as (relative path, reason)."""
        root = Path(input_dir)
        if not root.is_dir():
            raise FileNotFoundError(f"input_dir {root} is not a directory")
        skip = Path(exclude).resolve() if exclude else None
        seen: set[tuple[int, int]] = set()
        out = []
        def onerror(e: OSError) -> None:
            if unreadable is not None:
                rel = Path(e.filename).relative_to(root).as_posix() if e.filename else "."
                unreadable.append((rel, f"cannot list the folder: {e.strerror or e} (errno {e.errno})"))

        for dirpath, dirnames, filenames in os.walk(root, followlinks=True, onerror=onerror):
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in seen or (skip is not None and Path(dirpath).resolve() == skip):
                dirnames[:] = []  # a link loop, or our own output
                continue
            seen.add((st.st_dev, st.st_ino))
            dirnames[:] = [d for d in dirnames if not any(fnmatch.fnmatch(d, p) for p in self.ignore)]
            for name in filenames:
                if not any(fnmatch.fnmatch(name, p) for p in self.ignore):
                    out.append(Path(dirpath, name).relative_to(root).as_posix())
        return sorted(out)

    cost = 0.02

    def run(self, src) -> None:
        """src.audio; an unreadable file, or the same audio as an earlier input, ends the source."""
        try:
            dec = self(src.path)
        except AudioError as e:
            src.end("unreadable", e.reason)
            return
        src.audio = dec
        src.rec["sha1"] = dec.sha1
        src.rec["audio"] = {"sample_rate": dec.sample_rate, "channels": dec.channels, "codec": dec.codec,
                            "duration": round(dec.duration, 3)}
        dup = src.claim(dec.sha1)
        if dup is not None:
            src.rec["duplicate_of"] = dup
            src.end("duplicate", f"same audio as {dup}")

    def __call__(self, path) -> Decoded:
        """Raises AudioError (with a reason) for anything that is not usable audio."""
        path = Path(path)
        _check_input(path)
        info = audio_info(path)
        check_declared_length(path, info, path.stat().st_size, self.max_seconds)
        # Preallocate the analysis copy from the header's length; grow if the header lied.
        out16 = np.empty(int(np.ceil(info.duration * ANALYSIS_SR)) + ANALYSIS_SR, np.float32)
        n16 = n24 = n_native = 0
        sha = hashlib.sha1()
        rs16 = soxr.ResampleStream(info.sample_rate, ANALYSIS_SR, 1, dtype="float32", quality="HQ")
        rs24 = soxr.ResampleStream(info.sample_rate, EXPORT_SR, 1, dtype="float32", quality="HQ")
        # Named by pid and host so a later run can remove the copies of killed runs (run._clean_stale_temps).
        fd, tmp = tempfile.mkstemp(prefix=f"curate24-{os.getpid()}-{socket.gethostname()}-", suffix=".f32")
        path24 = Path(tmp)
        try:
            with os.fdopen(fd, "wb") as f24:
                def push(block: np.ndarray, last: bool) -> None:
                    nonlocal out16, n16, n24
                    b16 = rs16.resample_chunk(block, last=last)
                    if n16 + len(b16) > len(out16):
                        out16 = np.concatenate([out16[:n16], np.empty(max(len(b16), len(out16) // 2), np.float32)])
                    out16[n16:n16 + len(b16)] = b16
                    n16 += len(b16)
                    b24 = rs24.resample_chunk(block, last=last)
                    f24.write(np.ascontiguousarray(b24, np.float32).tobytes())
                    n24 += len(b24)

                for block in iter_audio(path, None):
                    block = np.ascontiguousarray(block, np.float32)
                    if not np.isfinite(block).all():
                        raise AudioError(path, "audio contains NaN or infinite samples")
                    sha.update(block.tobytes())
                    n_native += len(block)
                    push(block, last=False)
                push(np.zeros(0, np.float32), last=True)
            if n_native == 0:
                raise AudioError(path, "no audio samples (empty or truncated)")
            if info.codec.split("/")[0] in _EXACT_LENGTH and n_native < 0.99 * info.frames:
                raise AudioError(path, f"truncated: decoded {n_native / info.sample_rate:.2f} s of the "
                                       f"{info.duration:.2f} s its header announces")
        except BaseException:
            path24.unlink(missing_ok=True)
            raise
        wav16 = out16[:n16].copy() if n16 < len(out16) // 2 else out16[:n16]
        return Decoded(wav16, path24, n24, sha.hexdigest(), info.sample_rate, info.channels, info.codec,
                       n_native / info.sample_rate)
