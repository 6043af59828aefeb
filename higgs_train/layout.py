"""Which model a directory holds, and in which of the three layouts: read from config.json alone.

| kind      | layout   | config.json says                                     | weights               |
| --------- | -------- | ---------------------------------------------------- | --------------------- |
| llm       | original | model_type "higgs_audio"                             | sharded *.safetensors |
| llm       | hf       | model_type "higgs_audio_v2"                          | *.safetensors         |
| llm       | native   | architecture "DualFFNModel"                          | model.safetensors     |
| llm (v3)  | original | model_type "higgs_multimodal_qwen3" (Higgs TTS 3)    | *.safetensors (+ the  |
|           |          |                                                      | bundled tokenizer)    |
| llm (v3)  | native   | architecture "HiggsTTS3Model"                        | model.safetensors     |
| tokenizer | original | no model_type; n_filters, D, ratios, semantic_techer | model.pth             |
| tokenizer | hf       | model_type "higgs_audio_v2_tokenizer"                | model.safetensors     |
| tokenizer | native   | model_type "higgs_audio_tokenizer"                   | model.safetensors     |

An LLM's family (higgs_train/families, from the same config.json) says which of the layouts it has:
Higgs TTS 3 has its release's (original) and ours, no hf. A leaf module (imports no model code),
so the models' loaders and the converter both use it.
"""
from __future__ import annotations

import json
from pathlib import Path

LAYOUTS = ("native", "hf", "original")


def config_json(model_dir) -> dict:
    """A model directory's config.json object; FileNotFoundError / ValueError in one line naming
    what was found instead (the model family registry, higgs_train/families, reads it too)."""
    d = Path(model_dir)
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        found = sorted(p.name for p in d.iterdir())[:8] if d.is_dir() else None
        raise FileNotFoundError(f"{cfg_path} is missing: not a model directory"
                                + (f" (found: {', '.join(found) or 'nothing'})" if found is not None else
                                   " (no such directory)"))
    try:
        cfg = json.loads(cfg_path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg_path} is not readable JSON: {e}") from None
    if not isinstance(cfg, dict):
        raise ValueError(f"{cfg_path} holds a {type(cfg).__name__}, not a config object")
    return cfg


def detect(model_dir) -> tuple[str, str]:
    """(kind, layout) of a model directory: kind 'llm' | 'tokenizer', layout one of LAYOUTS.

    Raises FileNotFoundError / ValueError with one line naming what was found instead."""
    d = Path(model_dir)
    cfg = config_json(d)
    model_type = cfg.get("model_type")
    if model_type in ("higgs_audio", "higgs_multimodal_qwen3"):
        return "llm", "original"
    if model_type == "higgs_audio_v2":
        return "llm", "hf"
    if cfg.get("architecture") in ("DualFFNModel", "HiggsTTS3Model"):
        return "llm", "native"
    if model_type == "higgs_audio_v2_tokenizer":
        return "tokenizer", "hf"
    if model_type == "higgs_audio_tokenizer":
        return "tokenizer", "native"
    if model_type is None and {"n_filters", "D", "ratios"} <= set(cfg):
        return "tokenizer", "original"
    raise ValueError(f"{d} is none of the known layouts: config.json has model_type={model_type!r}, "
                     f"architecture={cfg.get('architecture')!r} (keys: {', '.join(sorted(cfg)[:10])})")
