"""The DualFFN LLM's weights on disk: every layout read and written here (names and configs:
layouts.py).

    model, layout = load_llm(DIR, dtype=None, device=None, quantize="none")   # native, hf or original
    save_llm(model, DIR, layout="native", tokenizer_dir=None)
    convert_llm(SRC, DST, to="hf")                   # tensor by tensor (python -m higgs_train.convert)
    model = from_hf_llama(LLAMA_DIR, dual_layers=None)   # a plain Llama, the source of task.init_from

Reading goes tensor by tensor (Checkpoint: each read opens its file anew, so no shard stays
mapped). Writing (write_llm, the one writer of every layout) splits the tensors into files of at
most MAX_SHARD_BYTES with huggingface_hub's split_torch_state_dict_into_shards (planned on meta
tensors, so a conversion never holds more than one output file plus one tensor), writes each file
whole under a temp name and renames it, then model.safetensors.index.json when there are several,
then the text tokenizer files, config.json last: a directory with a config.json is whole.

To hf or original, a model with fewer dual layers gets every layer dual, the audio norms and FFN
of the others filled with copies of the text ones (same outputs: see layouts). An hf export
without a chat template gets the release's prompt layout as one (chat_template.jinja beside
prompt.py: the port's processor then builds the prompts our encode_chat builds).
"""
from __future__ import annotations

import json
import logging
import shutil
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import Tensor, nn

from higgs_train.files import atomic_path, write_text_atomic
from higgs_train.layout import detect
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.layouts import (AUX_FILES, LAYOUTS, MAX_SHARD_BYTES, SPLIT, LayoutError, config_from_llama,
                                     export_plan, filled_from, layout_config, layout_name, native_shapes,
                                     read_config, token_ids)
from higgs_train.llm.model import DualFFNModel

log = logging.getLogger(__name__)

INDEX = "model.safetensors.index.json"
CHAT_TEMPLATE_FILE = Path(__file__).with_name("chat_template.jinja")


# ------------------------------------------------------------------------------- reading

class Checkpoint:
    """The safetensors files of a directory (one file, or shards + model.safetensors.index.json),
    read one tensor at a time: each read opens the file anew so no shard stays mapped (RSS)."""

    def __init__(self, model_dir):
        from safetensors import safe_open

        d = Path(model_dir)
        index = d / INDEX
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
    """{native name: [names in the checkpoint, concatenated on dim 0]} for every parameter of `cfg`
    ([] for what a plain Llama does not hold: the audio embedding and head, initialised anew).

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
        elif layout == "llama" and theirs is None:
            fill = filled_from(name)   # audio norms and FFN start as copies of the text ones
            src[name] = [layout_name(fill, layout)] if fill else []
        elif layout in ("hf", "llama") and name == "text_head.weight":
            # a port checkpoint saved without use_text_head, a tied Llama: text logits are then the
            # tied embedding's (what the port itself would need to compute a text loss)
            if layout == "hf":
                log.warning("%s has no text_lm_head.weight: the text head starts as a copy of the embedding",
                            ck.dir)
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
        if not parts:
            continue
        rows = sum(ck.meta[p].shape[0] for p in parts)
        got = (rows, *ck.meta[parts[0]].shape[1:])
        if got != shapes[name]:
            raise LayoutError(f"{ck.dir}: {parts[0]} has shape {list(got)}, the config implies {list(shapes[name])}")
    return src


def read_native(ck: Checkpoint, parts: list[str]) -> Tensor:
    ts = [ck.get(p) for p in parts]
    return ts[0] if len(ts) == 1 else torch.cat(ts)


def load_weights(model: nn.Module, tensors: Iterable[tuple[str, Tensor]], where, dtype=None, device=None,
                 quantize: str = "none", tied: Iterable[str] = ()) -> nn.Module:
    """Fill a model built on meta (AudioDecoder.build) from (native name, tensor) pairs read one at
    a time. quantize int8 / nf4: each decoder-layer linear is quantized as its tensor is read
    (higgs_train.llm.quantize), so no more than one full-precision matrix is held beyond the
    quantized model. `tied`: parameters that are another's (a tied head), never read."""
    from higgs_train.llm import quantize as q

    mode = q.check(quantize)
    sd, quantized = {}, []
    for name, t in tensors:
        if mode != "none" and q.is_target(name):
            q.replace(model, name, q.quantized_linear(t.to(dtype=dtype or t.dtype), mode, device))
            quantized.append(name.removesuffix("weight"))
        else:
            sd[name] = t.to(device=device or "cpu", dtype=dtype or t.dtype)
    missing, unexpected = model.load_state_dict(sd, strict=False, assign=True)
    missing = [k for k in missing if not k.startswith(tuple(quantized)) and k not in set(tied)]
    if missing or unexpected:
        raise RuntimeError(f"{where}: loading left {missing[:3]} unset and {unexpected[:3]} unused")
    if mode != "none":
        q.mark(model, mode)
    return model


def load_llm(model_dir, dtype=None, device=None, quantize: str = "none") -> tuple[DualFFNModel, str]:
    """A DualFFNModel from a directory in any layout, and that layout (quantize: load_weights)."""
    from higgs_train.llm import quantize as q

    q.check(quantize)
    d = Path(model_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is missing: not a DualFFNModel export directory (no such directory)")
    cfg, layout = read_config(d)
    ck = Checkpoint(d)
    src = native_sources(ck, cfg, layout)
    model = DualFFNModel.build(cfg, device=device)
    tensors = ((name, read_native(ck, parts)) for name, parts in src.items())
    return load_weights(model, tensors, d, dtype, device, quantize), layout


def from_hf_llama(hf_dir, dual_layers: list[int] | None = None, num_codebooks: int = 8,
                  codebook_size: int = 1024, vocab_size: int | None = None, seed: int = 0) -> DualFFNModel:
    """A DualFFN LLM started from a plain Hugging Face Llama directory (config.json + *.safetensors).

    Text weights map 1:1 (a tied checkpoint gets an untied copy of the embedding as head); every
    audio FFN and its norms start as copies of the text ones; the audio embedding and head are
    new (seeded). vocab_size > the checkpoint's grows the text tables (new rows = mean of the old
    ones) for tokens added to the tokenizer."""
    d = Path(hf_dir)
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d / 'config.json'} is missing: not a Hugging Face Llama directory")
    try:
        kind = detect(d)[0]
    except ValueError:   # a plain Llama config is none of the Higgs layouts
        kind = None
    if kind == "llm":
        raise ValueError(f"{d} holds a Higgs Audio LLM, not a plain Llama: load it with "
                         "higgs_train.llm.checkpoints.load_llm (any layout)")
    src_cfg = config_from_llama(json.loads((d / "config.json").read_text()), str(d / "config.json"),
                                dual_layers, num_codebooks, codebook_size)
    cfg = replace(src_cfg, vocab_size=max(src_cfg.vocab_size, vocab_size or 0))
    ck = Checkpoint(d)
    sd = {name: read_native(ck, parts) for name, parts in native_sources(ck, src_cfg, "llama").items() if parts}
    for name in ("text_embed.weight", "text_head.weight"):
        w = sd[name]
        if w.shape[0] < cfg.vocab_size:
            extra = w.float().mean(0, keepdim=True).expand(cfg.vocab_size - w.shape[0], -1)
            sd[name] = torch.cat([w, extra.to(w.dtype)])
    g = torch.Generator().manual_seed(seed)
    dtype = sd["text_embed.weight"].dtype
    rows = (cfg.num_codebooks * cfg.audio_vocab, cfg.hidden_size)
    sd["audio_embed.weight"] = (torch.randn(rows, generator=g) * 0.02).to(dtype)
    sd["audio_head.weight"] = (torch.randn(rows, generator=g) * 0.02).to(dtype)
    model = DualFFNModel.build(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model


# ------------------------------------------------------------------------------- writing

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
        write_text_atomic(out / INDEX, json.dumps(index, indent=2))


def copy_aux(src_dir, dst_dir, layout: str) -> list[str]:
    """Copy the text tokenizer files / chat template found in src_dir; returns their names. An hf
    export without a chat template gets the release's prompt layout as one."""
    copied = []
    for f in AUX_FILES if src_dir is not None else ():
        p = Path(src_dir) / f
        if p.is_file():
            shutil.copyfile(p, Path(dst_dir) / f)
            copied.append(f)
    if layout == "hf" and not {"chat_template.jinja", "chat_template.json"} & set(copied):
        shutil.copyfile(CHAT_TEMPLATE_FILE, Path(dst_dir) / "chat_template.jinja")
        copied.append("chat_template.jinja")
    return copied


def write_llm(out_dir, cfg: DualFFNConfig, layout: str, plan: list[tuple[str, str]], tensors: dict[str, Tensor],
              read: Callable[[str], Tensor], aux_dir=None, max_shard_bytes: int | None = MAX_SHARD_BYTES) -> None:
    """The one writer of a model directory in `layout`: plan [(name in layout, native name)] (from
    export_plan, in writing order), tensors {native name: tensor or meta tensor}, read(native name)
    -> tensor; the text tokenizer files of aux_dir; config.json last."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout={layout!r}: choose one of {', '.join(LAYOUTS)}")
    tokens = token_ids(cfg, aux_dir, layout) if layout != "native" else {}   # known before anything is written
    native = dict(plan)
    write_weights(out_dir, {name: tensors[src] for name, src in plan}, lambda name: read(native[name]),
                  max_shard_bytes)
    copy_aux(aux_dir, out_dir, layout)
    dtype = str(tensors["text_embed.weight"].dtype).removeprefix("torch.")
    write_text_atomic(Path(out_dir) / "config.json", json.dumps(layout_config(cfg, layout, tokens, dtype), indent=2))


def save_llm(model: DualFFNModel, out_dir, layout: str = "native", tokenizer_dir=None,
             state_dict: dict | None = None, max_shard_bytes: int | None = MAX_SHARD_BYTES) -> None:
    """Write `model` (or `state_dict`, e.g. gathered from ZeRO-3 ranks) in `layout` (+ the text
    tokenizer files of tokenizer_dir, if given). max_shard_bytes None: one model.safetensors."""
    sd = state_dict if state_dict is not None else model.state_dict()
    sd = {k: v.detach().cpu() for k, v in sd.items() if k in native_shapes(model.cfg)}
    write_llm(out_dir, model.cfg, layout, export_plan(model.cfg, layout), sd, sd.__getitem__, tokenizer_dir,
              max_shard_bytes)


def convert_llm(src, dst, to: str, max_shard_bytes: int | None = MAX_SHARD_BYTES) -> str:
    """The LLM in `src` (any layout) written in layout `to` into the new directory `dst`, one
    tensor at a time in the source's file order (peak memory: one output file plus one tensor,
    whatever the checkpoint's size: benchmarks/convert.py). Dtypes are kept; the text tokenizer
    files and chat template beside the source weights travel. Returns the source layout."""
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"dst={dst} exists and is not empty: convert into a new directory")
    cfg, layout = read_config(src)
    ck = Checkpoint(src)
    sources = native_sources(ck, cfg, layout)
    plan = export_plan(cfg, to)
    order = {name: i for i, name in enumerate(sorted(ck.where, key=lambda n: (ck.where[n], n)))}
    plan.sort(key=lambda p: order[sources[p[1]][0]])   # read one source file after the other
    meta = {name: (ck.meta[parts[0]] if len(parts) == 1 else
                   torch.cat([ck.meta[p] for p in parts])) for name, parts in sources.items()}
    write_llm(dst, cfg, to, plan, meta, lambda name: read_native(ck, sources[name]), src, max_shard_bytes)
    return layout
