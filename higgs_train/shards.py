"""The shard format shared by curation (writes) and training (reads).

A shard is a plain WebDataset tar. Each sample is one kept segment, its files in name order:

    KEY.codes.npy   int16 [8, frames] audio-tokenizer codes (after the tokenize stage)
    KEY.flac        24 kHz mono FLAC (16-bit)
    KEY.json        the manifest row (UTF-8 JSON)

Shards are named shard-NNNNNN.tar and written under a temporary name, renamed
only when complete, so a killed writer never leaves a half shard behind.
"""
from __future__ import annotations

import io
import json
import os
import tarfile
from contextlib import ExitStack
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import soundfile as sf
import webdataset as wds

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


def _tar(path) -> wds.TarWriter:
    """mtime 0, no owner: deterministic bytes, a rerun produces identical shards. PAX: keys of any length."""
    return wds.TarWriter(str(path), user="", group="", mode=0o644, mtime=0, encoder=False, format="PAX_FORMAT")


def _sample(key: str, flac: bytes, row: dict, codes: np.ndarray | None) -> dict:
    sample = {"__key__": key, "flac": flac, "json": dumps(row).encode()}
    return sample if codes is None else {**sample, "codes.npy": encode_codes(codes)}


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
        self.tar: wds.TarWriter | None = None
        self.size = 0
        self.written: list[Path] = []

    @property
    def current_name(self) -> str:
        return self.pattern.format(self.index)

    def _open(self) -> None:
        self.rename = ExitStack()  # the shard's atomic_path, held open until the shard is closed
        self.tar = _tar(self.rename.enter_context(atomic_path(self.out_dir / self.current_name)))
        self.size = 0

    def write(self, key: str, flac: bytes, row: dict, codes: np.ndarray | None = None,
              shard_key: str | None = None, shard_prefix: str = "") -> str:
        """Add one sample; returns the final file name of the shard that holds it.

        shard_key: the row is written with row[shard_key] = shard_prefix + that name, so the
        KEY.json inside a shard can be a manifest row that says where its sample lives."""
        if "." in key or "/" in key:
            raise ValueError(f"WebDataset keys may not contain '.' or '/': {key!r}")

        def encoded() -> dict:
            return _sample(key, flac, {**row, shard_key: shard_prefix + self.current_name} if shard_key else row,
                           codes)

        sample = encoded()
        nbytes = sum(len(d) + 1024 for k, d in sample.items() if k != "__key__")
        # roll over before a sample that would overflow a non-empty shard (shard names all have
        # one length, so the stamped row's size does not change with the shard it lands in)
        if self.tar is not None and self.size > 0 and self.size + nbytes > self.max_bytes:
            self.close_shard()
            sample = encoded()
        if self.tar is None:
            self._open()
        self.tar.write(sample)
        self.size += nbytes
        return self.current_name

    def close_shard(self) -> None:
        if self.tar is None:
            return
        self.tar.close()
        self.rename.close()
        self.written.append(self.out_dir / self.current_name)
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
            self.rename.__exit__(exc_type, exc, tb)
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
    with atomic_path(path) as tmp, _tar(tmp) as tar:
        for s in samples:
            tar.write(_sample(s["key"], s["flac"], s["row"], s.get("codes")))


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
