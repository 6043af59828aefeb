"""A Higgs TTS 3 LLM's weights on disk, in our layout or the release's (names: layouts.py).

    model, layout = load(DIR, dtype=None, device=None, quantize="none")
    save(model, DIR, layout="native" | "original", tokenizer_dir=None)
    convert(SRC, DST, to="native" | "original")    # python -m higgs_train.convert, streamed

The machinery is the DualFFN family's (higgs_train/llm/checkpoints.py): tensors read one at a time
(Checkpoint), decoder-layer linears quantized as they are read (higgs_train/llm/quantize.py),
shards of at most MAX_SHARD_BYTES each written whole and renamed, config.json last.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from higgs_train.families.higgs_tts3.config import Tts3Config
from higgs_train.families.higgs_tts3.layouts import (AUX_FILES, LAYOUTS, LayoutError, layout_config,
                                                     layout_name, read_config, tied_copies)
from higgs_train.families.higgs_tts3.model import HiggsTTS3Model, parameter_shapes
from higgs_train.files import write_text_atomic
from higgs_train.llm.checkpoints import Checkpoint, load_weights, write_weights
from higgs_train.tokenizer.layouts import BUNDLED_PREFIX as CODEC_PREFIX, bundled_names
from higgs_train.llm.layouts import MAX_SHARD_BYTES

log = logging.getLogger(__name__)


def sources(ck: Checkpoint, cfg: Tts3Config, layout: str) -> dict[str, str]:
    """{native name: its name in the checkpoint} for every distinct parameter of `cfg`; LayoutError
    naming missing, unexpected or misshapen tensors. Skipped: the bundled audio tokenizer, and a tied
    head's copy (the reference loaders skip both)."""
    shapes = parameter_shapes(cfg)
    src = {n: layout_name(n, layout) for n in shapes}
    missing = [theirs for theirs in src.values() if theirs not in ck.where]
    if missing:
        raise LayoutError(f"{ck.dir}: {len(missing)} tensors of a Higgs TTS 3 ({layout} layout) model are missing, "
                          f"e.g. {', '.join(missing[:3])}")
    used = set(src.values()) | (tied_copies(cfg) if layout == "original" else set())
    extra = sorted(n for n in ck.where if n not in used and not n.startswith(CODEC_PREFIX))
    if extra:
        raise LayoutError(f"{ck.dir}: {len(extra)} tensors that a Higgs TTS 3 model of this config does not "
                          f"have, e.g. {', '.join(extra[:3])}")
    for name, theirs in src.items():
        if tuple(ck.meta[theirs].shape) != shapes[name]:
            raise LayoutError(f"{ck.dir}: {theirs} has shape {list(ck.meta[theirs].shape)}, the config implies "
                              f"{list(shapes[name])}")
    return src


def load(model_dir, dtype=None, device=None, quantize: str = "none") -> tuple[HiggsTTS3Model, str]:
    """A HiggsTTS3Model from a directory in either layout, and that layout. quantize int8 / nf4:
    each decoder-layer linear quantized as its tensor is read (embeddings, heads, norms stay)."""
    from higgs_train.llm import quantize as q

    q.check(quantize)
    d = Path(model_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is missing: not a Higgs TTS 3 model directory (no such directory)")
    cfg, layout = read_config(d)
    ck = Checkpoint(d)
    model = HiggsTTS3Model.build(cfg, device=device)
    tensors = ((name, ck.get(theirs)) for name, theirs in sources(ck, cfg, layout).items())
    load_weights(model, tensors, d, dtype, device, quantize, tied=model.tied_names())
    model.tie_weights()
    return model, layout


def bundled_codec(model_dir) -> tuple[Checkpoint | None, list[str]]:
    """The audio tokenizer tensors a release directory bundles (CODEC_PREFIX), and their reader."""
    d = Path(model_dir)
    if not (d / "model.safetensors.index.json").is_file() and not any(d.glob("*.safetensors")):
        return None, []
    return bundled_names(d)


def save(model: HiggsTTS3Model, out_dir, layout: str = "native", tokenizer_dir=None,
         state_dict: dict | None = None, max_shard_bytes: int | None = MAX_SHARD_BYTES) -> None:
    """Write `model` (or `state_dict`, e.g. a gathered ZeRO-3 one) in `layout`, plus what travels
    with it from tokenizer_dir (the directory the model came from): its text tokenizer files and
    the audio tokenizer tensors it bundles (with their codec_config.json), copied as they are, so
    that the export is a whole model directory in either layout (tokenizer= may name it)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {k: v.detach().cpu() for k, v in sd.items() if k in parameter_shapes(model.cfg)}   # tied heads: once
    native = {layout_name(name, layout): name for name in sd}
    write(out_dir, model.cfg, layout, {theirs: sd[name] for theirs, name in native.items()},
          lambda n: sd[native[n]], tokenizer_dir, max_shard_bytes)


def write(out_dir, cfg: Tts3Config, layout: str, tensors: dict, read, aux_dir=None,
          max_shard_bytes: int | None = MAX_SHARD_BYTES) -> None:
    """The LLM's `tensors` ({name in `layout`: a tensor or its meta}, read(name) the real one), the
    audio tokenizer aux_dir bundles and aux_dir's AUX_FILES into out_dir, config.json last."""
    codec, codec_names = bundled_codec(aux_dir) if aux_dir is not None else (None, [])
    out = Path(out_dir)
    write_weights(out, {**tensors, **{n: codec.meta[n] for n in codec_names}},
                  lambda n: read(n) if n in tensors else codec.get(n), max_shard_bytes)
    for f in AUX_FILES if aux_dir is not None else ():
        if (Path(aux_dir) / f).is_file():
            shutil.copyfile(Path(aux_dir) / f, out / f)
    dtype = str(tensors[layout_name("text_embed.weight", layout)].dtype).removeprefix("torch.")
    write_text_atomic(out / "config.json", json.dumps(layout_config(cfg, layout, dtype), indent=2))


def convert(src, dst, to: str, max_shard_bytes: int | None = MAX_SHARD_BYTES) -> str:
    """The Higgs TTS 3 LLM in `src` (either layout) written in layout `to` into the new directory
    `dst`, one tensor at a time in the source's file order (peak memory: one output file plus one
    tensor, as higgs_train/llm/checkpoints.py's convert_llm). Tensors and dtypes are copied as they
    are (a round trip is bit-equal); the bundled audio tokenizer's tensors keep their names in
    either layout (so tokenizer=DST loads it), and codec_config.json and the text tokenizer files
    travel. Returns the source layout."""
    if to not in LAYOUTS:
        raise ValueError(f"to={to!r}: a Higgs TTS 3 model has the layouts {', '.join(LAYOUTS)}")
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"dst={dst} exists and is not empty: convert into a new directory")
    cfg, layout = read_config(src)
    ck = Checkpoint(src)
    theirs = {layout_name(name, to): source for name, source in sources(ck, cfg, layout).items()}
    order = sorted(theirs, key=lambda n: (ck.where[theirs[n]], theirs[n]))   # one source file after the other
    write(dst, cfg, to, {n: ck.meta[theirs[n]] for n in order}, lambda n: ck.get(theirs[n]), src, max_shard_bytes)
    log.info("%s (%s layout) -> %s (%s layout)", src, layout, dst, to)
    return layout
