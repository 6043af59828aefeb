"""Whole-or-nothing small files: readers never see a half-written one."""
from __future__ import annotations

import os
from pathlib import Path


def write_text_atomic(path, text: str) -> Path:
    """Write `text` to a temp name beside `path` (`.NAME.PID.tmp`), then rename it over `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path
