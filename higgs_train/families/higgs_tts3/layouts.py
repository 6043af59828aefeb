"""The Higgs TTS 3 LLM in two directory layouts: tensor names and config.json, both ways.

    cfg, layout = read_config(DIR)              # refuses what HiggsTTS3Model does not reproduce
    layout_name("layers.0.attn.q_norm.weight", "original") -> "body.layers.0.self_attn.q_norm.weight"
    (reading and writing the weights: higgs_train/families/higgs_tts3/checkpoints.py)

| layout   | config.json                                                | weights                          |
| -------- | ---------------------------------------------------------- | -------------------------------- |
| native   | architecture HiggsTTS3Model + Tts3Config                   | model.safetensors or shards      |
| original | the release's: model_type higgs_multimodal_qwen3, a Qwen3   | *.safetensors (+ index); the     |
|          | text_config, audio_encoder_config {encoder_type discrete,   | audio tokenizer bundled under    |
|          | num_codebooks, vocab_size 1026, tie_word_embeddings}        | tokenizer BUNDLED_PREFIX         |

Names (native -> original):

    text_embed.weight          tied.embedding.text_embedding.weight
    audio_embed.weight         tied.embedding.modality_embeddings.0.embedding.weight
    norm.weight                body.norm.weight
    text_head.weight           tied.head.text_head.weight        (only when the text head is untied)
    audio_head.weight          tied.head.modality_heads.0.weight (only when the audio head is untied)
    layers.N.attn.*            body.layers.N.self_attn.*         ({q,k,v,o}_proj, {q,k}_norm)
    layers.N.attn_norm         body.layers.N.input_layernorm
    layers.N.ffn_norm          body.layers.N.post_attention_layernorm
    layers.N.mlp.*             body.layers.N.mlp.*               ({gate,up,down}_proj)

A tied head is not stored (the embedding is the head): 399 tensors at the release's size. The
reference loaders (sglang-omni's weight_loader, mlx-audio's sanitize) skip the audio tokenizer's
tensors under BUNDLED_PREFIX (higgs_train/tokenizer/layouts.py) and a tied head's copy where a checkpoint has one; so does ours (the
audio tokenizer reads its tensors).

Release configs that change outputs in ways HiggsTTS3Model does not reproduce are refused with the
field named: a text backbone other than qwen3, attention biases, an activation other than SiLU,
sliding-window attention, RoPE scaling, an audio encoder other than the discrete table, a table
width other than the hidden size, stream BOS/EOS other than the last two codes.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from higgs_train.families.higgs_tts3.config import Tts3Config

LAYOUTS = ("native", "original")
ARCHITECTURE = "HiggsTTS3Model"                 # a native config.json's `architecture`
MODEL_TYPE = "higgs_multimodal_qwen3"           # the release's `model_type`
QWEN3_ROPE_THETA = 1_000_000.0                  # what the reference uses when rope_theta is null
TOP = {"text_embed.weight": "tied.embedding.text_embedding.weight",
       "audio_embed.weight": "tied.embedding.modality_embeddings.0.embedding.weight",
       "norm.weight": "body.norm.weight",
       "text_head.weight": "tied.head.text_head.weight",
       "audio_head.weight": "tied.head.modality_heads.0.weight"}
IN_LAYER = {"attn_norm.": "input_layernorm.", "ffn_norm.": "post_attention_layernorm.",
            "attn.": "self_attn.", "mlp.": "mlp."}
# files next to the weights that travel with a conversion (the text tokenizer)
AUX_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
             "added_tokens.json", "generation_config.json",
             "codec_config.json")   # the bundled audio tokenizer's config, where one is given (higgs_train/tokenizer/layouts.py)


class LayoutError(ValueError):
    """A directory or config this family cannot load exactly (one line, naming the field)."""


def layout_name(native: str, layout: str) -> str:
    """The name of native parameter `native` in `layout`."""
    if layout == "native":
        return native
    if native in TOP:
        return TOP[native]
    _, i, rest = native.split(".", 2)                          # layers.N.rest
    for ours, theirs in IN_LAYER.items():
        if rest.startswith(ours):
            return f"body.layers.{i}.{theirs}{rest[len(ours):]}"
    raise KeyError(native)


def tied_copies(cfg: Tts3Config) -> set[str]:
    """Release names of the heads `cfg` ties: skipped where a checkpoint holds them, never written."""
    return {TOP[n] for n, tied in (("text_head.weight", cfg.tie_word_embeddings),
                                   ("audio_head.weight", cfg.tie_audio_embeddings)) if tied}


# ------------------------------------------------------------------------------------ configs

def config_from_original(raw: dict, where: str = "config.json") -> Tts3Config:
    """Tts3Config of a release config.json, or LayoutError naming the field."""
    tc, enc = raw.get("text_config"), raw.get("audio_encoder_config")
    if not isinstance(tc, dict) or not isinstance(enc, dict):
        raise LayoutError(f"{where}: model_type {MODEL_TYPE} needs text_config and audio_encoder_config objects")
    if tc.get("model_type", "qwen3") != "qwen3":
        raise LayoutError(f"{where}: text_config.model_type={tc['model_type']!r} is not supported (qwen3 only)")
    refuse = {"attention_bias": "attention biases", "use_sliding_window": "sliding-window attention",
              "rope_scaling": "RoPE scaling"}
    for key, what in refuse.items():
        if tc.get(key):
            raise LayoutError(f"{where}: text_config.{key}={json.dumps(tc[key])}: {what} not supported")
    if tc.get("hidden_act", "silu") != "silu":
        raise LayoutError(f"{where}: text_config.hidden_act={tc['hidden_act']!r} is not supported (silu only)")
    rope = tc.get("rope_parameters") or {}            # transformers 5 keeps theta here
    if rope.get("rope_type", "default") != "default":
        raise LayoutError(f"{where}: text_config.rope_parameters.rope_type={rope['rope_type']!r} is not supported")
    theta = tc.get("rope_theta", rope.get("rope_theta"))
    if enc.get("encoder_type", "discrete") != "discrete":
        raise LayoutError(f"{where}: audio_encoder_config.encoder_type={enc['encoder_type']!r} is not supported "
                          "(discrete only)")
    D = int(tc["hidden_size"])
    if int(enc.get("out_dim", D)) != D:
        raise LayoutError(f"{where}: audio_encoder_config.out_dim={enc['out_dim']} differs from hidden_size {D}")
    A = int(enc["vocab_size"])                         # codes + stream BOS and EOS
    for key, want in (("audio_boc_token_id", A - 2), ("audio_eoc_token_id", A - 1)):
        if raw.get(key, want) != want:
            raise LayoutError(f"{where}: {key}={raw[key]}: the stream BOS/EOS must be the last two codes "
                              f"({A - 2}, {A - 1})")
    nh = int(tc["num_attention_heads"])
    return Tts3Config(
        vocab_size=int(tc["vocab_size"]), hidden_size=D, intermediate_size=int(tc["intermediate_size"]),
        num_layers=int(tc["num_hidden_layers"]), num_heads=nh,
        num_kv_heads=int(tc.get("num_key_value_heads") or nh), head_dim=int(tc.get("head_dim") or D // nh),
        rms_norm_eps=float(tc.get("rms_norm_eps", 1e-6)),
        rope_theta=QWEN3_ROPE_THETA if theta is None else float(theta),
        tie_word_embeddings=bool(tc.get("tie_word_embeddings", True)),
        num_codebooks=int(enc["num_codebooks"]), codebook_size=A - 2,
        tie_audio_embeddings=bool(enc.get("tie_word_embeddings", True)))


def original_config(cfg: Tts3Config, dtype: str) -> dict:
    """The release's config.json for a model of config `cfg` (what config_from_original reads back)."""
    text = {"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "vocab_size": cfg.vocab_size,
            "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
            "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
            "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "rms_norm_eps": cfg.rms_norm_eps,
            "rope_theta": cfg.rope_theta, "rope_scaling": None, "hidden_act": "silu", "attention_bias": False,
            "use_sliding_window": False, "tie_word_embeddings": cfg.tie_word_embeddings, "torch_dtype": dtype}
    audio = {"encoder_type": "discrete", "num_codebooks": cfg.num_codebooks, "vocab_size": cfg.audio_vocab,
             "tie_word_embeddings": cfg.tie_audio_embeddings}
    return {"model_type": MODEL_TYPE, "architectures": ["HiggsMultimodalQwen3ForConditionalGeneration"],
            "text_config": text, "audio_encoder_config": audio, "audio_token_id": -100, "torch_dtype": dtype}


def layout_config(cfg: Tts3Config, layout: str, dtype: str) -> dict:
    """config.json of `layout` for a model of config `cfg`."""
    return {"architecture": ARCHITECTURE, **asdict(cfg)} if layout == "native" else original_config(cfg, dtype)


def layout_of(raw: dict) -> str | None:
    """'native' | 'original' when a config.json dict is this family's, else None."""
    if raw.get("architecture") == ARCHITECTURE:
        return "native"
    return "original" if raw.get("model_type") == MODEL_TYPE else None


def read_config(model_dir) -> tuple[Tts3Config, str]:
    """(config, layout) of a Higgs TTS 3 LLM directory; one-line errors otherwise."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: not a Higgs TTS 3 model directory")
    raw = json.loads(path.read_text())
    layout = layout_of(raw)
    if layout is None:
        raise LayoutError(f"{path}: neither architecture {ARCHITECTURE!r} nor model_type {MODEL_TYPE!r}")
    if layout == "original":
        return config_from_original(raw, str(path)), layout
    raw.pop("architecture")
    return Tts3Config.from_dict(raw), layout
