"""The DualFFN LLM in three directory layouts (docs/model.md, "Released layouts"), and a plain
Llama as a fourth, source-only one: the tables of names and configs.

    cfg, layout = read_config(DIR)                     # any layout; refuses what we cannot reproduce
    layout_name("layers.0.attn.q_proj.weight", "hf")   # a tensor's name in a layout
    (reading and writing weights: higgs_train/llm/checkpoints.py: load_llm, save_llm, convert_llm,
    from_hf_llama)

| layout   | config.json                                   | weights                                  |
| -------- | --------------------------------------------- | ---------------------------------------- |
| native   | architecture DualFFNModel + DualFFNConfig      | model.safetensors or shards + index      |
| hf       | transformers' HiggsAudioV2Config (higgs_audio_v2) | *.safetensors, names under `model.`  |
| original | the release's HiggsAudioConfig (higgs_audio), nested Llama text_config | sharded *.safetensors + index |

Parameter names (native -> original; hf differs where shown):

    text_embed.weight        embed_tokens.weight                       hf: model.embed_tokens.weight
    audio_embed.weight       audio_codebook_embeddings.weight          hf: model.embed_audio_tokens.embed_audio_tokens.weight
    norm.weight              norm.weight                               hf: model.norm.weight
    text_head.weight         audio_decoder_proj.text_lm_head.weight    hf: text_lm_head.weight
    audio_head.weight        audio_decoder_proj.audio_lm_head.weight   hf: audio_lm_head.weight
    layers.N.attn.*          layers.N.self_attn.*                      hf: model.layers.N.self_attn.*
    layers.N.attn_norm       layers.N.input_layernorm
    layers.N.ffn_norm        layers.N.post_attention_layernorm
    layers.N.mlp.*           layers.N.mlp.*
    layers.N.audio_attn_norm layers.N.audio_input_layernorm
    layers.N.audio_ffn_norm  layers.N.audio_post_attention_layernorm
    layers.N.audio_mlp.*     layers.N.audio_mlp.*

A plain Hugging Face Llama (model_type llama; only read, to start a DualFFN from its weights:
task.init_from) names its text weights as the port does (model.embed_tokens, model.layers.N.*,
model.norm, lm_head for the text head); it has no audio weights (config_from_llama adds the
DualFFN's own fields, the loader fills the audio parts).

The audio table is [K * (codebook_size + 2), D] in all three (the port's `codebook_size` counts
the two stream tokens). An original checkpoint trained with a partially frozen embedding or text
head stores it as two tensors (`*_frozen` rows first, then `*_trainable`): they are concatenated.

hf and original need every layer dual. A native model with fewer dual layers is exported with the
audio norms and FFN of its other layers filled by copies of the text ones: a non-dual layer sends
audio positions through the text norms and FFN, a dual layer whose audio weights equal its text
weights does exactly the same, so outputs are unchanged (test_convert_llm checks the logits).
Loaded back, such a model has every layer dual (more parameters, same outputs). The other way,
an original config with audio_adapter_type dual_ffn and a subset of dual layers loads exactly: its
other layers are plain Llama layers, which is what our non-dual layers are. A port checkpoint
saved without text_lm_head gets a copy of the embedding as text head (warned).

Release configs that change outputs in ways DualFFNModel does not reproduce are refused with
the field named: fast-forward layers (dual_ffn_fast_forward with a layer not in
audio_dual_ffn_layers: audio positions skip that layer and are hidden from text attention), the
stack adapter, an audio tower (skip_audio_tower false), averaged audio embeddings, audio self
attention, audio-out embedding projector, RQ transformer, decoder-projector layers, no delay
pattern, stream BOS/EOS ids other than codebook_size / +1, Llama biases or a non-SiLU activation.
"""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import torch

from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import DualFFNModel

LAYOUTS = ("native", "hf", "original")   # what a Higgs LLM directory is in (higgs_train/layout.py detects it)

TOP = {
    "original": {"text_embed.weight": "embed_tokens.weight",
                 "audio_embed.weight": "audio_codebook_embeddings.weight",
                 "norm.weight": "norm.weight",
                 "text_head.weight": "audio_decoder_proj.text_lm_head.weight",
                 "audio_head.weight": "audio_decoder_proj.audio_lm_head.weight"},
    "hf": {"text_embed.weight": "model.embed_tokens.weight",
           "audio_embed.weight": "model.embed_audio_tokens.embed_audio_tokens.weight",
           "norm.weight": "model.norm.weight",
           "text_head.weight": "text_lm_head.weight",
           "audio_head.weight": "audio_lm_head.weight"},
    "llama": {"text_embed.weight": "model.embed_tokens.weight",
              "norm.weight": "model.norm.weight",
              "text_head.weight": "lm_head.weight"},
}
LAYER_PREFIX = {"original": "layers.", "hf": "model.layers.", "llama": "model.layers."}
IN_LAYER = {"attn.": "self_attn.", "attn_norm.": "input_layernorm.", "ffn_norm.": "post_attention_layernorm.",
            "mlp.": "mlp.", "audio_attn_norm.": "audio_input_layernorm.",
            "audio_ffn_norm.": "audio_post_attention_layernorm.", "audio_mlp.": "audio_mlp."}
# what fills the audio part of a layer that is not dual (same outputs: see the module docstring)
FILL = {"audio_attn_norm.": "attn_norm.", "audio_ffn_norm.": "ffn_norm.", "audio_mlp.": "mlp."}
# original checkpoints with a partially frozen table: (frozen rows, trainable rows), concatenated
SPLIT = {"embed_tokens.weight": ("embed_tokens.embedding_frozen.weight", "embed_tokens.embedding_trainable.weight"),
         "audio_decoder_proj.text_lm_head.weight": ("audio_decoder_proj.text_lm_head.linear_frozen.weight",
                                                    "audio_decoder_proj.text_lm_head.linear_trainable.weight")}

# special tokens of the release (Llama-3 reserved block), by role: DualFFNConfig.special_tokens
RELEASE_TOKENS = {"audio_bos": 128011, "audio_eos": 128012, "audio_out_bos": 128013, "audio_delay": 128014,
                  "audio_in": 128015, "audio_out": 128016, "pad": 128001}
# files next to the weights that travel with a conversion (text tokenizer, chat template)
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
             "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
             "processor_config.json", "generation_config.json")
MAX_SHARD_BYTES = 2 * 1024 ** 3


class LayoutError(ValueError):
    """A directory or config this framework cannot load exactly (one line, naming the field)."""


# ------------------------------------------------------------------------------------- names

def layout_name(native: str, layout: str) -> str | None:
    """The name of native parameter `native` in `layout` (None: a plain Llama has no such tensor)."""
    if layout == "native":
        return native
    if native in TOP[layout]:
        return TOP[layout][native]
    if not native.startswith("layers."):
        return None                                        # llama: no audio embedding or head
    _, i, rest = native.split(".", 2)                      # layers.N.rest
    if layout == "llama" and rest.startswith(tuple(FILL)):
        return None
    for a, b in IN_LAYER.items():
        if rest.startswith(a):
            return f"{LAYER_PREFIX[layout]}{i}.{b}{rest[len(a):]}"
    raise KeyError(native)


def native_shapes(cfg: DualFFNConfig) -> dict[str, tuple[int, ...]]:
    """Parameter names and shapes of a config, from a meta-device build (no memory)."""
    with torch.device("meta"):
        return {k: tuple(v.shape) for k, v in DualFFNModel(cfg).state_dict().items()}


def export_plan(cfg: DualFFNConfig, layout: str) -> list[tuple[str, str]]:
    """[(name in `layout`, native name whose tensor it holds)] for a model of config `cfg`."""
    full = cfg if layout == "native" else replace(cfg, dual_layers=None)
    plan = []
    for name in native_shapes(full):
        fill = filled_from(name)
        src = fill if fill and not cfg.is_dual(int(name.split(".")[1])) else name
        plan.append((layout_name(name, layout), src))
    return plan


# ------------------------------------------------------------------------------------ configs

def filled_from(native: str) -> str | None:
    """The text parameter whose copy fills audio parameter `native` of a layer (see FILL), or None."""
    if not native.startswith("layers."):
        return None
    _, i, rest = native.split(".", 2)
    for a, b in FILL.items():
        if rest.startswith(a):
            return f"layers.{i}.{b}{rest[len(a):]}"
    return None


def _llama_rope(theta: float, rs: dict | None, where: str) -> tuple[float, dict | None]:
    kind = (rs or {}).get("rope_type", (rs or {}).get("type"))
    if kind in (None, "default"):
        return float(theta), None
    if kind != "llama3":
        raise LayoutError(f"{where}: rope type {kind!r} is not supported (llama3 or default)")
    return float(theta), {"factor": float(rs["factor"]), "low_freq_factor": float(rs["low_freq_factor"]),
                          "high_freq_factor": float(rs["high_freq_factor"]),
                          "original_max_position_embeddings": int(rs["original_max_position_embeddings"])}


def _check_llama(c: dict, where: str) -> None:
    for key in ("attention_bias", "mlp_bias"):
        if c.get(key):
            raise LayoutError(f"{where}: {key}=true is not supported (DualFFNModel has no biases)")
    if c.get("hidden_act", "silu") != "silu":
        raise LayoutError(f"{where}: hidden_act={c['hidden_act']!r} is not supported (silu only)")


def config_from_original(raw: dict, where: str = "config.json") -> DualFFNConfig:
    """DualFFNConfig of a release config (HiggsAudioConfig), or LayoutError naming the field."""
    tc = raw.get("text_config")
    if not isinstance(tc, dict):
        raise LayoutError(f"{where}: model_type higgs_audio without a text_config object")
    if tc.get("model_type", "llama") != "llama":
        raise LayoutError(f"{where}: text_config.model_type={tc['model_type']!r} is not supported (llama only)")
    _check_llama(tc, f"{where} text_config")
    L = tc.get("num_hidden_layers", 32)
    adapter = raw.get("audio_adapter_type", "stack")    # the original code's defaults where a key is absent
    if adapter not in ("dual_ffn", "dual_ffn_fast_forward"):
        raise LayoutError(f"{where}: audio_adapter_type={adapter!r} is not supported "
                          "(dual_ffn or dual_ffn_fast_forward)")
    dual = sorted(set(raw.get("audio_dual_ffn_layers") or []))
    if any(not 0 <= i < L for i in dual):
        raise LayoutError(f"{where}: audio_dual_ffn_layers={dual} names layers outside 0..{L - 1}")
    if adapter == "dual_ffn_fast_forward" and len(dual) != L:
        ff = [i for i in range(L) if i not in dual]
        raise LayoutError(f"{where}: audio_dual_ffn_layers leaves layers {ff} fast-forward "
                          "(audio_adapter_type dual_ffn_fast_forward: audio skips them), which DualFFNModel "
                          "does not reproduce")
    refuse = {"skip_audio_tower": (False, "an audio tower (Whisper features) is not supported"),
              "audio_embed_avg": (False, "averaged audio embeddings are not supported (summed)"),
              "use_audio_out_self_attention": (False, "audio self-attention is not supported"),
              "use_audio_out_embed_projector": (False, "the audio-out embedding projector is not supported"),
              "use_rq_transformer": (False, "the RQ transformer is not supported"),
              "audio_decoder_proj_num_layers": (0, "decoder projector layers are not supported"),
              "use_delay_pattern": (False, "codes without the delay pattern are not supported")}
    for key, (default, why) in refuse.items():
        value = raw.get(key, default)
        bad = not value if key in ("skip_audio_tower", "use_delay_pattern") else bool(value)
        if bad:
            raise LayoutError(f"{where}: {key}={json.dumps(value)}: {why}")
    K, C = raw.get("audio_num_codebooks", 12), raw.get("audio_codebook_size", 1024)
    if (raw.get("audio_stream_bos_id", 1024), raw.get("audio_stream_eos_id", 1025)) != (C, C + 1):
        raise LayoutError(f"{where}: audio_stream_bos_id/audio_stream_eos_id must be "
                          f"audio_codebook_size ({C}) and +1")
    theta, rope = _llama_rope(tc.get("rope_theta", 10000.0), tc.get("rope_scaling"), f"{where} text_config")
    nh = tc.get("num_attention_heads", 32)
    tokens = {k: raw[f] for k, f in (("audio_eos", "audio_eos_token_id"),
                                          ("audio_out_bos", "audio_out_bos_token_id"),
                                          ("audio_in", "audio_in_token_idx"), ("audio_out", "audio_out_token_idx"),
                                          ("pad", "pad_token_id")) if raw.get(f) is not None}
    return DualFFNConfig(
        vocab_size=tc.get("vocab_size", 32000), hidden_size=tc.get("hidden_size", 4096),
        intermediate_size=tc.get("intermediate_size", 11008), num_layers=L, num_heads=nh,
        num_kv_heads=tc.get("num_key_value_heads") or nh,
        head_dim=tc.get("head_dim") or tc.get("hidden_size", 4096) // nh, rms_norm_eps=tc.get("rms_norm_eps", 1e-6),
        rope_theta=theta, rope_scaling=rope, dual_layers=None if len(dual) == L else dual,
        num_codebooks=K, codebook_size=C, special_tokens=tokens,
        encode_audio_in_tokens=bool(raw.get("encode_audio_in_tokens", False)))


def config_from_hf(raw: dict, where: str = "config.json") -> DualFFNConfig:
    """DualFFNConfig of a transformers HiggsAudioV2Config dict (its defaults where a key is absent)."""
    from transformers import HiggsAudioV2Config

    c = HiggsAudioV2Config(**{k: v for k, v in raw.items() if k not in ("model_type", "transformers_version",
                                                                       "architectures")}).to_dict()
    _check_llama(c, where)
    A = c["codebook_size"]                    # the port counts the stream BOS/EOS in codebook_size
    if (c["audio_stream_bos_id"], c["audio_stream_eos_id"]) != (A - 2, A - 1):
        raise LayoutError(f"{where}: audio_stream_bos_id/audio_stream_eos_id must be codebook_size-2 "
                          f"and -1 ({A - 2}, {A - 1})")
    rp = c.get("rope_parameters") or {}
    theta, rope = _llama_rope(rp.get("rope_theta", 10000.0), rp, where)
    tokens = {"audio_out": c["audio_token_id"], "audio_out_bos": c["audio_bos_token_id"],
              "audio_delay": c["audio_delay_token_id"]}
    if c.get("pad_token_id") is not None:
        tokens["pad"] = c["pad_token_id"]
    nh = c["num_attention_heads"]
    return DualFFNConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"], intermediate_size=c["intermediate_size"],
        num_layers=c["num_hidden_layers"], num_heads=nh, num_kv_heads=c["num_key_value_heads"] or nh,
        head_dim=c["head_dim"] or c["hidden_size"] // nh, rms_norm_eps=c["rms_norm_eps"], rope_theta=theta,
        rope_scaling=rope, dual_layers=None, num_codebooks=c["num_codebooks"], codebook_size=A - 2,
        special_tokens=tokens, encode_audio_in_tokens=False)


def config_from_llama(raw: dict, where: str, dual_layers: list[int] | None, num_codebooks: int,
                      codebook_size: int) -> DualFFNConfig:
    """DualFFNConfig of a plain Llama config.json (its text part) with the DualFFN's own fields."""
    _check_llama(raw, where)
    rs = raw.get("rope_scaling") or raw.get("rope_parameters")   # transformers < 5 / >= 5
    theta, rope = _llama_rope(raw.get("rope_theta") or (rs or {}).get("rope_theta", 10000.0), rs, where)
    nh = raw["num_attention_heads"]
    return DualFFNConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_size"], intermediate_size=raw["intermediate_size"],
        num_layers=raw["num_hidden_layers"], num_heads=nh, num_kv_heads=raw.get("num_key_value_heads", nh),
        head_dim=raw.get("head_dim") or raw["hidden_size"] // nh, rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
        rope_theta=theta, rope_scaling=rope, dual_layers=dual_layers, num_codebooks=num_codebooks,
        codebook_size=codebook_size)


def read_config(model_dir) -> tuple[DualFFNConfig, str]:
    """(config, layout) of an LLM directory in any layout; one-line errors otherwise."""
    from higgs_train.layout import detect

    d = Path(model_dir)
    kind, layout = detect(d)
    if kind != "llm":
        raise LayoutError(f"{d} holds an audio tokenizer ({layout} layout), not an LLM")
    raw = json.loads((d / "config.json").read_text())
    where = str(d / "config.json")
    from higgs_train.families import detect as family

    if family(raw, where) != "higgs_v2":   # another family's LLM (higgs_train/families loads it)
        raise LayoutError(f"{where}: a {family(raw, where)} model, not DualFFN: load it with "
                          "higgs_train.families.family_of(DIR).load")
    if layout == "original":
        return config_from_original(raw, where), layout
    if layout == "hf":
        return config_from_hf(raw, where), layout
    raw.pop("architecture", None)
    return DualFFNConfig.from_dict(raw), layout


def _rope_dict(cfg: DualFFNConfig) -> dict:
    if cfg.rope_scaling is None:
        return {"rope_type": "default", "rope_theta": cfg.rope_theta}
    return {"rope_type": "llama3", "rope_theta": cfg.rope_theta, **cfg.rope_scaling}


def layout_config(cfg: DualFFNConfig, layout: str, tokens: dict[str, int], dtype: str) -> dict:
    """config.json of `layout` for a model of config `cfg` (every layer dual in hf/original)."""
    if layout == "native":
        return {"architecture": "DualFFNModel", **asdict(cfg)}
    llama = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                 num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
                 num_key_value_heads=cfg.num_kv_heads, head_dim=cfg.head_dim, rms_norm_eps=cfg.rms_norm_eps,
                 hidden_act="silu", attention_bias=False, mlp_bias=False, tie_word_embeddings=False)
    if layout == "hf":
        from transformers import HiggsAudioV2Config

        c = HiggsAudioV2Config(**llama, rope_parameters=_rope_dict(cfg), num_codebooks=cfg.num_codebooks,
                               codebook_size=cfg.audio_vocab, audio_token_id=tokens["audio_out"],
                               audio_bos_token_id=tokens["audio_out_bos"],
                               audio_delay_token_id=tokens["audio_delay"], audio_stream_bos_id=cfg.audio_bos,
                               audio_stream_eos_id=cfg.audio_eos, pad_token_id=tokens["pad"],
                               max_position_embeddings=131072)
        out = c.to_dict()
        out["architectures"] = ["HiggsAudioV2ForConditionalGeneration"]
        out["dtype"] = dtype
        return out
    rope = None if cfg.rope_scaling is None else {"rope_type": "llama3", **cfg.rope_scaling}
    text = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], **llama, "rope_theta": cfg.rope_theta,
            "rope_scaling": rope, "max_position_embeddings": 131072, "torch_dtype": dtype}
    return {"model_type": "higgs_audio", "architectures": ["HiggsAudioModel"], "text_config": text,
            "audio_adapter_type": "dual_ffn_fast_forward", "audio_dual_ffn_layers": list(range(cfg.num_layers)),
            "audio_ffn_hidden_size": cfg.hidden_size, "audio_ffn_intermediate_size": cfg.intermediate_size,
            "audio_decoder_proj_num_layers": 0, "audio_embed_avg": False, "encode_whisper_embed": False,
            "skip_audio_tower": True, "encode_audio_in_tokens": cfg.encode_audio_in_tokens,
            "use_delay_pattern": True, "use_audio_out_embed_projector": False,
            "use_audio_out_self_attention": False, "use_rq_transformer": False,
            "audio_num_codebooks": cfg.num_codebooks, "audio_codebook_size": cfg.codebook_size,
            "audio_stream_bos_id": cfg.audio_bos, "audio_stream_eos_id": cfg.audio_eos,
            "audio_in_token_idx": tokens["audio_in"], "audio_out_token_idx": tokens["audio_out"],
            "audio_out_bos_token_id": tokens["audio_out_bos"], "audio_eos_token_id": tokens["audio_eos"],
            "pad_token_id": tokens["pad"], "hidden_size": cfg.hidden_size, "torch_dtype": dtype}


NEEDS = {"original": ("audio_eos", "audio_out_bos", "audio_in", "audio_out", "pad"),
         "hf": ("audio_out", "audio_out_bos", "audio_delay", "pad")}


def token_ids(cfg: DualFFNConfig, model_dir, layout: str) -> dict[str, int]:
    """The special-token ids a `layout` config states: the config's own (special_tokens),
    else the text tokenizer's in `model_dir` (text_tokenizer.ROLES), else, for the Llama-3 vocabulary,
    the release's reserved ids. LayoutError naming the roles still unknown."""
    ids: dict[str, int] = {}
    d = Path(model_dir) if model_dir is not None else None
    if d is not None and any((d / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        from higgs_train.llm.text_tokenizer import load_text_tokenizer, special_token_ids

        ids = special_token_ids(load_text_tokenizer(d))
    ids.update(cfg.special_tokens or {})
    if cfg.vocab_size == 128256:
        ids = {**RELEASE_TOKENS, **ids}
    missing = [r for r in NEEDS[layout] if r not in ids]
    if missing:
        raise LayoutError(f"{d}: special-token ids for {', '.join(missing)} are unknown (not in config.json "
                          "special_tokens, no text tokenizer files naming them)")
    return ids
