"""The DualFFN LLM's weights on disk, in any of the three layouts (names and configs: layouts.py).

    model, layout = load_llm(DIR, dtype=None, device=None, quantize="none")
    save_llm(model, DIR, layout="native", tokenizer_dir=None)

Reading goes tensor by tensor (Checkpoint), writing into shards of at most MAX_SHARD_BYTES
(write_weights: huggingface_hub's split, each file written whole and renamed), config.json last: a
directory with a config.json is whole.
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor

from higgs_train.files import atomic_path, write_text_atomic
from higgs_train.llm.layouts import (AUX_FILES, LAYOUTS, MAX_SHARD_BYTES, SPLIT, LayoutError, export_plan,
                                     layout_config, layout_name, native_shapes, read_config, token_ids)
from higgs_train.llm.model import DualFFNConfig, DualFFNModel

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- tensors on disk

class Checkpoint:
    """The safetensors files of a directory (one file, or shards + model.safetensors.index.json),
    read one tensor at a time: each read opens the file anew so no shard stays mapped (RSS)."""

    def __init__(self, model_dir):
        from safetensors import safe_open

        d = Path(model_dir)
        index = d / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = sorted(set(weight_map.values()))
        else:
            files = sorted(p.name for p in d.glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{d} holds no *.safetensors weights")
        self.dir = d
        self.where: dict[str, str] = {}
        self.meta: dict[str, Tensor] = {}   # name -> a meta tensor of its shape and dtype
        for f in files:
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d / f} is missing (named by {index.name})")
            with safe_open(str(d / f), "pt") as sf:
                for k in sf.keys():
                    s = sf.get_slice(k)
                    self.where[k] = f
                    self.meta[k] = torch.empty(s.get_shape(), dtype=s[:0].dtype, device="meta")

    def get(self, name: str) -> Tensor:
        from safetensors import safe_open

        with safe_open(str(self.dir / self.where[name]), "pt") as sf:
            return sf.get_tensor(name)


def native_sources(ck: Checkpoint, cfg: DualFFNConfig, layout: str) -> dict[str, list[str]]:
    """{native name: [names in the checkpoint, concatenated on dim 0]} for every parameter of `cfg`.

    Raises LayoutError naming missing or unexpected tensors."""
    shapes = native_shapes(cfg)
    src: dict[str, list[str]] = {}
    missing = []
    for name in shapes:
        theirs = layout_name(name, layout)
        if theirs in ck.where:
            src[name] = [theirs]
        elif layout == "original" and theirs in SPLIT and all(p in ck.where for p in SPLIT[theirs]):
            src[name] = list(SPLIT[theirs])
        elif layout == "hf" and name == "text_head.weight":
            # a port checkpoint saved without use_text_head: text logits are then the tied
            # embedding's (what the port itself would need to compute a text loss)
            log.warning("%s has no text_lm_head.weight: the text head starts as a copy of the embedding", ck.dir)
            src[name] = [layout_name("text_embed.weight", layout)]
        else:
            missing.append(theirs)
    if missing:
        raise LayoutError(f"{ck.dir}: {len(missing)} tensors of a {layout}-layout model are missing, "
                          f"e.g. {', '.join(missing[:3])}")
    used = {n for parts in src.values() for n in parts}
    extra = [n for n in ck.where if n not in used and not n.endswith("rotary_emb.inv_freq")]
    if extra:
        raise LayoutError(f"{ck.dir}: {len(extra)} tensors that a {layout}-layout model of this config does "
                          f"not have, e.g. {', '.join(sorted(extra)[:3])}")
    for name, parts in src.items():
        rows = sum(ck.meta[p].shape[0] for p in parts)
        got = (rows, *ck.meta[parts[0]].shape[1:])
        if got != shapes[name]:
            raise LayoutError(f"{ck.dir}: {parts[0]} has shape {list(got)}, the config implies {list(shapes[name])}")
    return src


def read_native(ck: Checkpoint, parts: list[str]) -> Tensor:
    ts = [ck.get(p) for p in parts]
    return ts[0] if len(ts) == 1 else torch.cat(ts)


# ----------------------------------------------------------------------------------- load / save

def load_llm(model_dir, dtype=None, device=None, quantize: str = "none") -> tuple[DualFFNModel, str]:
    """A DualFFNModel from a directory in any layout, and that layout. quantize int8 / nf4: each
    decoder-layer linear is quantized as its tensor is read (higgs_train.llm.quantize), so no more
    than one full-precision matrix is held beyond the quantized model."""
    from higgs_train.llm import quantize as q

    mode = q.check(quantize)
    d = Path(model_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is missing: not a DualFFNModel export directory (no such directory)")
    cfg, layout = read_config(d)
    ck = Checkpoint(d)
    src = native_sources(ck, cfg, layout)
    model = DualFFNModel.build(cfg, device=device)
    sd, quantized = {}, []
    for name, parts in src.items():
        t = read_native(ck, parts)
        if mode != "none" and q.is_target(name):
            q.replace(model, name, q.quantized_linear(t.to(dtype=dtype or t.dtype), mode, device))
            quantized.append(name.removesuffix("weight"))
        else:
            sd[name] = t.to(device=device or "cpu", dtype=dtype or t.dtype)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not k.startswith(tuple(quantized))]
    if missing or unexpected:
        raise RuntimeError(f"{d}: loading left {missing[:3]} unset and {unexpected[:3]} unused")
    if mode != "none":
        q.mark(model, mode)
    return model, layout


def write_weights(out_dir, tensors: dict[str, Tensor], read: Callable[[str], Tensor],
                  max_shard_bytes: int | None = MAX_SHARD_BYTES) -> None:
    """Safetensors files of at most max_shard_bytes (None: one file) holding `tensors` ({name: a
    tensor of its shape and dtype, meta will do}, in the order they are to be written); read(name)
    gives the real tensor when its file is written. One file is model.safetensors; several are
    model-0000i-of-0000n.safetensors + model.safetensors.index.json (as transformers writes them).
    Each file is written to a temp name and renamed when whole."""
    from huggingface_hub import split_torch_state_dict_into_shards
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # planned on meta tensors: sizes only (the library would put tensors that share memory, a fill
    # copy and its source, in one file without counting the copy)
    split = split_torch_state_dict_into_shards({k: t.to("meta") for k, t in tensors.items()}, filename_pattern="model{suffix}.safetensors",
                                               max_shard_size=max_shard_bytes or sys.maxsize)
    for fname, names in split.filename_to_tensors.items():
        shard: dict[str, Tensor] = {}
        for name in names:
            t = read(name).contiguous()
            # a fill copy is a tensor of its own (safetensors refuses shared memory)
            shard[name] = t.clone() if any(t is u for u in shard.values()) else t
        with atomic_path(out / fname) as tmp:
            save_file(shard, str(tmp), metadata={"format": "pt"})
        del shard
    if split.is_sharded:
        index = {"metadata": split.metadata, "weight_map": dict(sorted(split.tensor_to_filename.items()))}
        write_json(out / "model.safetensors.index.json", index)


def write_json(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def copy_aux(src_dir, dst_dir, layout: str) -> list[str]:
    """Copy the text tokenizer files / chat template found in src_dir; returns their names. An hf
    export without a chat template gets the release's prompt layout as one (prompt.CHAT_TEMPLATE:
    the port's processor then builds the prompts our encode_chat builds)."""
    copied = []
    for f in AUX_FILES if src_dir is not None else ():
        p = Path(src_dir) / f
        if p.is_file():
            shutil.copyfile(p, Path(dst_dir) / f)
            copied.append(f)
    if layout == "hf" and not {"chat_template.jinja", "chat_template.json"} & set(copied):
        from higgs_train.llm.prompt import CHAT_TEMPLATE

        (Path(dst_dir) / "chat_template.jinja").write_text(CHAT_TEMPLATE)
        copied.append("chat_template.jinja")
    return copied


def _dtype_name(t: Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def save_llm(model: DualFFNModel, out_dir, layout: str = "native", tokenizer_dir=None,
             state_dict: dict | None = None, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    """Write `model` in `layout` (+ the text tokenizer files of tokenizer_dir, if given)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {k: v.detach().cpu() for k, v in sd.items() if k in native_shapes(model.cfg)}
    plan = dict(export_plan(model.cfg, layout))
    out = Path(out_dir)
    write_weights(out, {name: sd[src] for name, src in plan.items()}, lambda name: sd[plan[name]], max_shard_bytes)
    tokens = token_ids(model.cfg, tokenizer_dir, layout) if layout != "native" else {}
    write_json(out / "config.json", layout_config(model.cfg, layout, tokens, _dtype_name(sd["text_embed.weight"])))
    if tokenizer_dir is not None or layout == "hf":
        copy_aux(tokenizer_dir, out, layout)

