"""The DualFFN LLM from one layout to another, tensor by tensor (python -m higgs_train.convert).

Names and configs are higgs_train.llm.layouts' (the same maps the loaders use). Tensors are read
one at a time (each read opens its shard anew, so no shard stays mapped) and written into shards
of at most layouts.MAX_SHARD_BYTES (2 GiB), planned on meta tensors (checkpoints.write_weights):
peak memory is one output shard plus one tensor, whatever the checkpoint's size
(benchmarks/convert.py measures it). Dtypes are kept.

To hf or original, a model with fewer dual layers gets every layer dual, the audio norms and FFN
of the others filled with copies of the text ones (same outputs: see layouts). The text tokenizer
files and chat template next to the source weights are copied (an hf export without a chat
template gets prompt.CHAT_TEMPLATE, the release's prompt layout); config.json is written last, so a
directory with a config.json is a whole model.
"""
from __future__ import annotations

from pathlib import Path

import torch

from higgs_train.llm.checkpoints import Checkpoint, copy_aux, native_sources, read_native, write_json, write_weights
from higgs_train.llm.layouts import MAX_SHARD_BYTES, export_plan, layout_config, read_config, token_ids


def convert(src, dst, src_layout: str, to: str, max_shard_bytes: int = MAX_SHARD_BYTES) -> None:
    src, dst = Path(src), Path(dst)
    if dst.exists() and any(dst.iterdir()):
        raise FileExistsError(f"dst={dst} exists and is not empty: convert into a new directory")
    cfg, layout = read_config(src)
    assert layout == src_layout, (layout, src_layout)
    ck = Checkpoint(src)
    sources = native_sources(ck, cfg, layout)
    tokens = token_ids(cfg, src, to) if to != "native" else {}
    plan = export_plan(cfg, to)
    # read in checkpoint order (one shard after the other)
    order = {name: i for i, name in enumerate(sorted(ck.where, key=lambda n: (ck.where[n], n)))}
    plan.sort(key=lambda p: order[sources[p[1]][0]])
    meta = {name: torch.cat([ck.meta[p] for p in sources[native]]) for name, native in plan}   # shapes only
    dtype = str(meta[plan[0][0]].dtype).removeprefix("torch.")
    native = dict(plan)
    write_weights(dst, meta, lambda name: read_native(ck, sources[native[name]]), max_shard_bytes)
    copy_aux(src, dst, to)
    write_json(dst / "config.json", layout_config(cfg, to, tokens, dtype))
