"""A DualFFN LLM started from a plain Hugging Face Llama checkpoint (task.init_from=LLAMA_DIR):
text weights map 1:1, the audio FFNs and norms start as copies of the text ones, the audio
embedding and head are new. (A Higgs Audio directory in any layout loads with
DualFFNModel.from_pretrained instead.)"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from higgs_train.layout import detect
from higgs_train.llm.model import DualFFNConfig, DualFFNModel


def from_hf_llama(hf_dir, dual_layers: list[int] | None = None, num_codebooks: int = 8,
                  codebook_size: int = 1024, vocab_size: int | None = None, seed: int = 0) -> DualFFNModel:
    """Start from a Hugging Face Llama directory (config.json + *.safetensors, local path).

    Text weights map 1:1 (a tied checkpoint gets an untied copy of the embedding as head);
    every audio FFN and its norms start as copies of the text ones; audio embedding and head
    are freshly initialised. vocab_size > the checkpoint's grows the text tables (new rows =
    mean of the old ones) for tokens added to the tokenizer."""
    d = Path(hf_dir)
    if not (d / "config.json").exists():
        raise FileNotFoundError(f"{d / 'config.json'} is missing: not a Hugging Face Llama directory")
    hc = json.loads((d / "config.json").read_text())
    try:
        kind = detect(d)[0]
    except ValueError:   # a plain Llama config is none of the Higgs layouts
        kind = None
    if kind == "llm":
        raise ValueError(f"{d} holds a Higgs Audio LLM, not a plain Llama: load it with "
                         "DualFFNModel.from_pretrained (any layout)")
    files = sorted(d.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {d}")
    if hc.get("attention_bias") or hc.get("mlp_bias"):
        raise ValueError("Llama checkpoints with attention/MLP biases are not supported")
    rs = hc.get("rope_scaling") or hc.get("rope_parameters")
    if rs and rs.get("rope_type", rs.get("type")) == "llama3":
        rope_scaling = {k: float(rs[k]) if k != "original_max_position_embeddings" else int(rs[k])
                        for k in ("factor", "low_freq_factor", "high_freq_factor",
                                  "original_max_position_embeddings")}
    elif rs and rs.get("rope_type", rs.get("type")) not in (None, "default"):
        raise ValueError(f"unsupported rope scaling {rs}")
    else:
        rope_scaling = None
    theta = hc.get("rope_theta") or (rs or {}).get("rope_theta", 10000.0)
    nh = hc["num_attention_heads"]
    cfg = DualFFNConfig(
        vocab_size=max(hc["vocab_size"], vocab_size or 0), hidden_size=hc["hidden_size"],
        intermediate_size=hc["intermediate_size"], num_layers=hc["num_hidden_layers"], num_heads=nh,
        num_kv_heads=hc.get("num_key_value_heads", nh), head_dim=hc.get("head_dim") or hc["hidden_size"] // nh,
        rms_norm_eps=hc.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_scaling=rope_scaling,
        dual_layers=dual_layers, num_codebooks=num_codebooks, codebook_size=codebook_size)
    src: dict[str, Tensor] = {}
    for f in files:
        src.update(load_file(str(f)))
    rename = {"model.embed_tokens.weight": "text_embed.weight", "model.norm.weight": "norm.weight",
              "lm_head.weight": "text_head.weight"}
    sub = {"self_attn.": "attn.", "input_layernorm.": "attn_norm.", "post_attention_layernorm.": "ffn_norm."}
    sd: dict[str, Tensor] = {}
    for k, v in src.items():
        if k in rename:
            sd[rename[k]] = v
        elif k.startswith("model.layers."):
            k = k[len("model."):]
            for a, b in sub.items():
                k = k.replace(a, b)
            sd[k] = v
    if "text_head.weight" not in sd:   # tied checkpoint (Llama-3.2): our head is untied
        sd["text_head.weight"] = sd["text_embed.weight"].clone()
    for name in ("text_embed.weight", "text_head.weight"):
        w = sd[name]
        if w.shape[0] < cfg.vocab_size:
            extra = w.float().mean(0, keepdim=True).expand(cfg.vocab_size - w.shape[0], -1)
            sd[name] = torch.cat([w, extra.to(w.dtype)])
    for i in range(cfg.num_layers):
        if cfg.is_dual(i):
            for a, b in (("attn_norm", "audio_attn_norm"), ("ffn_norm", "audio_ffn_norm")):
                sd[f"layers.{i}.{b}.weight"] = sd[f"layers.{i}.{a}.weight"].clone()
            for p in ("gate_proj", "up_proj", "down_proj"):
                sd[f"layers.{i}.audio_mlp.{p}.weight"] = sd[f"layers.{i}.mlp.{p}.weight"].clone()
    g = torch.Generator().manual_seed(seed)
    dtype = sd["text_embed.weight"].dtype
    K, A, D = cfg.num_codebooks, cfg.audio_vocab, cfg.hidden_size
    sd["audio_embed.weight"] = (torch.randn(K * A, D, generator=g) * 0.02).to(dtype)
    sd["audio_head.weight"] = (torch.randn(K * A, D, generator=g) * 0.02).to(dtype)
    model = DualFFNModel.build(cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    return model
