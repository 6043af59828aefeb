"""The shard format shared by curation (writes) and training (reads).

A shard is a plain WebDataset tar. Each sample is one kept segment:

    KEY.flac        24 kHz mono FLAC (16-bit)
    KEY.json        the manifest row (UTF-8 JSON)
    KEY.codes.npy   int16 [8, frames] audio-tokenizer codes (after the tokenize stage)

Shards are named shard-NNNNNN.tar and written under a temporary name, renamed
only when complete, so a killed writer never leaves a half shard behind.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf

from higgs_train.files import atomic_path, dumps

SAMPLE_RATE = 24_000
NUM_CODEBOOKS = 8
SHARD_PATTERN = "shard-{:06d}.tar"


def encode_flac(wav: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, np.clip(np.asarray(wav, np.float32), -1, 1), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    wav, sr = sf.read(io.BytesIO(data), dtype="float32", always_2d=True)
    return wav.mean(axis=1), sr


def encode_codes(codes: np.ndarray) -> bytes:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[0] != NUM_CODEBOOKS:
        raise ValueError(f"codes must be [{NUM_CODEBOOKS}, frames], got {codes.shape}")
    if codes.min(initial=0) < 0 or codes.max(initial=0) > np.iinfo(np.int16).max:
        raise ValueError("codes out of int16 range")
    buf = io.BytesIO()
    np.save(buf, codes.astype(np.int16))
    return buf.getvalue()


def decode_codes(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data))


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0  # deterministic bytes: a rerun produces identical shards
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


class ShardWriter:
    """Writes samples into shard-NNNNNN.tar files of at most `max_bytes` each.

    with ShardWriter(out_dir, start_index=0) as w:
        shard_name = w.write(key, flac_bytes, row_dict, codes=None)
    Files appear as shard-NNNNNN.tar only once closed (tmp name before).
    """

    def __init__(self, out_dir, max_bytes: int = 1 << 30, start_index: int = 0, pattern: str = SHARD_PATTERN):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.index = start_index
        self.pattern = pattern
        self.tar: tarfile.TarFile | None = None
        self.size = 0
        self.written: list[Path] = []

    @property
    def current_name(self) -> str:
        return self.pattern.format(self.index)

    def _open(self) -> None:
        self.tmp = self.out_dir / f".{self.current_name}.{os.getpid()}.tmp"
        self.tar = tarfile.open(self.tmp, "w")
        self.size = 0

    def write(self, key: str, flac: bytes, row: dict, codes: np.ndarray | None = None,
              shard_key: str | None = None, shard_prefix: str = "") -> str:
        """Add one sample; returns the final file name of the shard that holds it.

        shard_key: the row is written with row[shard_key] = shard_prefix + that name, so the
        KEY.json inside a shard can be a manifest row that says where its sample lives."""
        if "." in key or "/" in key:
            raise ValueError(f"WebDataset keys may not contain '.' or '/': {key!r}")

        def encoded() -> list[tuple[str, bytes]]:
            r = {**row, shard_key: shard_prefix + self.current_name} if shard_key else row
            parts = [(f"{key}.flac", flac), (f"{key}.json", dumps(r).encode())]
            if codes is not None:
                parts.append((f"{key}.codes.npy", encode_codes(codes)))
            return parts

        parts = encoded()
        nbytes = sum(len(d) + 1024 for _, d in parts)
        # roll over before a sample that would overflow a non-empty shard (shard names all have
        # one length, so the stamped row's size does not change with the shard it lands in)
        if self.tar is not None and self.size > 0 and self.size + nbytes > self.max_bytes:
            self.close_shard()
            parts = encoded()
        if self.tar is None:
            self._open()
        for name, data in parts:
            _add(self.tar, name, data)
        self.size += nbytes
        return self.current_name

    def close_shard(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        final = self.out_dir / self.current_name
        os.replace(self.tmp, final)
        self.written.append(final)
        self.tar = None
        self.index += 1

    def close(self) -> list[Path]:
        self.close_shard()
        return self.written

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif self.tar is not None:  # failed mid-shard: drop the partial file
            self.tar.close()
            self.tmp.unlink(missing_ok=True)
            self.tar = None


def iter_shard(path) -> Iterator[dict]:
    """Samples of one shard as dicts: key, flac (bytes), row (dict), codes (ndarray or None).

    Plain tarfile reading, for tools that must see every sample exactly once
    (tokenize stage, merge, tests). Training reads through webdataset.
    """
    cur: dict | None = None
    with tarfile.open(path, "r") as tar:
        for m in tar:
            if not m.isfile():
                continue
            key, _, ext = m.name.partition(".")
            if cur is None or cur["key"] != key:
                if cur is not None:
                    yield cur
                cur = {"key": key, "flac": None, "row": None, "codes": None}
            data = tar.extractfile(m).read()
            if ext == "flac":
                cur["flac"] = data
            elif ext == "json":
                cur["row"] = json.loads(data)
            elif ext == "codes.npy":
                cur["codes"] = decode_codes(data)
    if cur is not None:
        yield cur


def rewrite_shard(path, samples: Iterable[dict]) -> None:
    """Replace a shard atomically with `samples` (dicts as from iter_shard)."""
    with atomic_path(path) as tmp, tarfile.open(tmp, "w") as tar:
        for s in samples:
            _add(tar, f"{s['key']}.flac", s["flac"])
            _add(tar, f"{s['key']}.json", dumps(s["row"]).encode())
            if s.get("codes") is not None:
                _add(tar, f"{s['key']}.codes.npy", encode_codes(s["codes"]))


def list_shards(spec) -> list[str]:
    """Expand shard specs (a dir, a glob, a brace pattern, or a list of them) to sorted tar paths."""
    import glob

    import braceexpand

    specs = [spec] if isinstance(spec, (str, Path)) else list(spec)
    out: list[str] = []
    for s in specs:
        s = str(s)
        if os.path.isdir(s):
            out += glob.glob(os.path.join(s, "**", "shard-*.tar"), recursive=True)
            continue
        for pat in braceexpand.braceexpand(s):
            out += glob.glob(pat, recursive=True)
    return sorted(set(out))
