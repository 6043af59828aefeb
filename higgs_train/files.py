"""Whole-or-nothing files: readers never see a half-written one."""
from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, keep_ext: bool = False):
    """A temp name beside `path` (`.NAME.PID.tmp`; keep_ext: `.NAME.PID.tmp.EXT`, for writers that
    choose the format by extension: matplotlib, soundfile, ffmpeg) for any writer; renamed over
    `path` when the block ends normally, removed when it raises."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp" + (path.suffix if keep_ext else ""))
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temps(path) -> None:
    """Remove atomic_path's temp names for `path` (`.NAME.PID.tmp*`) that a killed writer left: call
    it where only one writer of `path` runs (a source's own record, part or claim)."""
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.*.tmp*"):
        stale.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path):
    """A fresh temp folder beside `path` (`.NAME.PID.tmp`) to fill; when the block ends normally
    it replaces `path` (an older folder there is removed first), when it raises it is removed.
    Readers see the old folder or the new one, never a half-written one (between the removal and
    the rename there is briefly none)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path, text: str) -> Path:
    """Write `text` to a temp name beside `path`, then rename it over `path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def dumps(obj, **kw) -> str:
    """JSON text, UTF-8 where it can be. A file name that is not valid UTF-8 is held (as os.walk
    gives it) with its undecodable bytes as lone surrogates (PEP 383): such a value is written as
    \\udcXX escapes, so json.loads gives the same str back and os.fsencode(it) the original bytes."""
    text = json.dumps(obj, ensure_ascii=False, **kw)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = json.dumps(obj, **kw)
    return text
