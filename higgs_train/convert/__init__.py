"""Model directories in three layouts, and moving a model between them.

    python -m higgs_train.convert src=DIR dst=DIR to=native|hf|original
    python -m higgs_train.convert src=V3_DIR dst=DIR to=native|original   # a Higgs TTS 3 LLM (no hf layout)
    python -m higgs_train.convert src=V3_DIR dst=DIR kind=tokenizer   # the tokenizer a Higgs TTS 3 checkpoint bundles

A directory is an LLM or an audio tokenizer, in one of three layouts (docs/model.md,
"Released layouts"; the table is in higgs_train/layout.py).

An LLM is converted by its model family (higgs_train/families: Family.convert; DualFFN's is
higgs_train/llm/checkpoints.py's convert_llm, Higgs TTS 3's converts between its release layout
and ours, the bundled audio tokenizer travelling in both), an audio tokenizer by higgs_train/convert/tokenizer.py; `detect`
(higgs_train/layout.py) reads a layout from config.json, and for kind=tokenizer
higgs_train/tokenizer/layouts.py's `tokenizer_layout`, which also knows the bundled one.
"""
from __future__ import annotations

from pathlib import Path

from higgs_train.layout import LAYOUTS, detect

__all__ = ["LAYOUTS", "convert", "detect"]


def convert(src, dst, to: str, kind: str | None = None, codec_config=None) -> tuple[str, str]:
    """Convert the model in `src` to layout `to` in `dst`; returns (kind, source layout).

    kind=tokenizer takes the audio tokenizer out of a Higgs TTS 3 checkpoint (which holds an LLM
    and the tokenizer it bundles), at codec_config (higgs_train/tokenizer/layouts.py, read_bundled)."""
    if to not in LAYOUTS:
        raise ValueError(f"to={to!r}: choose one of {', '.join(LAYOUTS)}")
    if kind not in (None, "llm", "tokenizer"):
        raise ValueError(f"kind={kind!r}: choose llm or tokenizer (or leave it out: src's config.json says)")
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError(f"dst is src ({src}): write the converted model to a new directory")
    if kind == "tokenizer" or codec_config is not None:
        from higgs_train.tokenizer.layouts import tokenizer_layout

        found, layout = "tokenizer", tokenizer_layout(src)
    else:
        found, layout = detect(src)
    if kind not in (None, found):
        raise ValueError(f"kind={kind}: {src} holds an audio tokenizer ({layout} layout), not an LLM")
    if found == "llm":   # the model family (config.json) converts its own layouts
        from higgs_train.families import family_of

        family_of(src).convert(src, dst, to)
    else:
        from higgs_train.convert.tokenizer import convert as convert_tokenizer

        convert_tokenizer(src, dst, layout, to, codec_config)
    return found, layout
