"""Model directories in three layouts, and moving a model between them.

    python -m higgs_train.convert src=DIR dst=DIR to=native|hf|original

A directory is an LLM or an audio tokenizer, in one of three layouts (docs/model.md,
"Released layouts"; the table is in higgs_train/layout.py).

Each kind has one module here with `convert(src, dst, src_layout, to)`; `detect`
(higgs_train/layout.py) is the only place that reads a layout from config.json.
"""
from __future__ import annotations

from pathlib import Path

from higgs_train.layout import LAYOUTS, detect

__all__ = ["LAYOUTS", "convert", "detect"]


def convert(src, dst, to: str) -> tuple[str, str]:
    """Convert the model in `src` to layout `to` in `dst`; returns (kind, source layout)."""
    if to not in LAYOUTS:
        raise ValueError(f"to={to!r}: choose one of {', '.join(LAYOUTS)}")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"dst is src ({src}): write the converted model to a new directory")
    kind, layout = detect(src)
    if kind == "llm":
        from higgs_train.convert import llm as mod
    else:
        from higgs_train.convert import tokenizer as mod
    mod.convert(src, dst, layout, to)
    return kind, layout
