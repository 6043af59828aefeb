"""Model directories in three layouts, and moving a model between them.

    python -m higgs_train.convert src=DIR dst=DIR to=native|hf|original

A directory is an LLM or an audio tokenizer, in one of three layouts (docs/model.md,
"Released layouts"; the table is in higgs_train/layout.py).

An LLM is converted by higgs_train/llm/checkpoints.py (convert_llm: the module that reads and
writes every LLM layout), an audio tokenizer by higgs_train/convert/tokenizer.py; `detect`
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
        from higgs_train.llm.checkpoints import convert_llm

        convert_llm(src, dst, to)
    else:
        from higgs_train.convert.tokenizer import convert as convert_tokenizer

        convert_tokenizer(src, dst, layout, to)
    return kind, layout
