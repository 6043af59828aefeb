"""Whole-or-nothing small files: readers never see a half-written one."""
from __future__ import annotations

import json
import os
from pathlib import Path


def write_text_atomic(path, text: str) -> Path:
    """Write `text` to a temp name beside `path` (`.NAME.PID.tmp`), then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


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
