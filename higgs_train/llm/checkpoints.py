"""The DualFFN LLM's weights on disk, in any of the three layouts (names and configs: layouts.py).

    model, layout = load_llm(DIR, dtype=None, device=None, quantize="none")
    save_llm(model, DIR, layout="native", tokenizer_dir=None)

Reading goes tensor by tensor (Checkpoint), writing into shards of at most MAX_SHARD_BYTES
(SafetensorsShardWriter), config.json last: a directory with a config.json is whole.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import torch
from torch import Tensor

from higgs_train.files import write_text_atomic
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
        self.meta: dict[str, tuple[tuple[int, ...], str]] = {}
        for f in files:
            if not (d / f).is_file():
                raise FileNotFoundError(f"{d / f} is missing (named by {index.name})")
            with safe_open(str(d / f), "pt") as sf:
                for k in sf.keys():
                    s = sf.get_slice(k)
                    self.where[k] = f
                    self.meta[k] = (tuple(s.get_shape()), s.get_dtype())

    def get(self, name: str) -> Tensor:
        from safetensors import safe_open

        with safe_open(str(self.dir / self.where[name]), "pt") as sf:
            return sf.get_tensor(name)

    def nbytes(self, name: str) -> int:
        shape, dt = self.meta[name]
        n = 1
        for s in shape:
            n *= s
        return n * {"F64": 8, "F32": 4, "I64": 8, "I32": 4, "F16": 2, "BF16": 2, "I16": 2, "U8": 1,
                    "I8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}[dt]


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
        rows = sum(ck.meta[p][0][0] for p in parts)
        got = (rows, *ck.meta[parts[0]][0][1:])
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


class SafetensorsShardWriter:
    """Writes tensors into safetensors shards of at most max_bytes (one file if they fit), each
    shard written whole and renamed, then model.safetensors.index.json when there are several."""

    def __init__(self, out_dir, total_bytes: int, max_bytes: int = MAX_SHARD_BYTES):
        self.out = Path(out_dir)
        self.out.mkdir(parents=True, exist_ok=True)
        self.max = max_bytes
        self.single = total_bytes <= max_bytes
        self.buf: dict[str, Tensor] = {}
        self.size = 0
        self.files: list[list[str]] = []
        self.total = 0

    def add(self, name: str, t: Tensor) -> None:
        n = t.numel() * t.element_size()
        if self.buf and self.size + n > self.max:
            self.flush()
        self.buf[name] = t.contiguous()
        self.size += n
        self.total += n

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.buf:
            return
        tmp = self.out / f".shard{len(self.files):05d}.{os.getpid()}.tmp"
        save_file(self.buf, str(tmp), metadata={"format": "pt"})
        self.files.append(list(self.buf))
        os.replace(tmp, self.out / f".shard{len(self.files) - 1:05d}.done")
        self.buf, self.size = {}, 0

    def close(self) -> None:
        self.flush()
        n = len(self.files)
        if n == 1 and self.single:
            os.replace(self.out / ".shard00000.done", self.out / "model.safetensors")
            return
        weight_map = {}
        for i, names in enumerate(self.files):
            fname = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.out / f".shard{i:05d}.done", self.out / fname)
            weight_map.update({k: fname for k in names})
        index = {"metadata": {"total_size": self.total}, "weight_map": dict(sorted(weight_map.items()))}
        write_json(self.out / "model.safetensors.index.json", index)


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
    plan = export_plan(model.cfg, layout)
    out = Path(out_dir)
    total = sum(sd[s].numel() * sd[s].element_size() for _, s in plan)
    w = SafetensorsShardWriter(out, total, max_shard_bytes)
    used = set()
    for name, src in plan:   # a fill copy is a tensor of its own (safetensors refuses shared memory)
        w.add(name, sd[src].clone() if src in used else sd[src])
        used.add(src)
    w.close()
    tokens = token_ids(model.cfg, tokenizer_dir, layout) if layout != "native" else {}
    write_json(out / "config.json", layout_config(model.cfg, layout, tokens, _dtype_name(sd["text_embed.weight"])))
    if tokenizer_dir is not None or layout == "hf":
        copy_aux(tokenizer_dir, out, layout)

