"""The FULL-size key sets (name -> shape) of the two released checkpoints, from the ORIGINAL code
(boson-multimodal 0.1.1) built at the release configs on the meta device (no weights, no download).

    /tmp/boson_venv/bin/python scripts/release_fixtures/keys.py

Writes tests/fixtures/release/keys/{tokenizer_original,llm_original}.json.
"""
from __future__ import annotations

import copy
import json
import os
import re

import torch

import common
from tokenizer import RELEASE_CONFIG as TOKENIZER_RELEASE_CONFIG

OUT = os.path.join(common.FIXTURES, "keys")

# bosonai/higgs-audio-v2-generation-3B-base config.json, the keys HiggsAudioConfig reads
# (Llama-3.2-3B text_config; the release's nested audio_encoder_config is unused with
# skip_audio_tower=true and left at HiggsAudioEncoderConfig's defaults, which equal it).
LLM_RELEASE_CONFIG = {
    "architectures": ["HiggsAudioModel"],
    "audio_adapter_type": "dual_ffn_fast_forward",
    "audio_bos_token": "<|audio_bos|>",
    "audio_codebook_size": 1024,
    "audio_decoder_proj_num_layers": 0,
    "audio_dual_ffn_layers": list(range(28)),
    "audio_embed_avg": False,
    "audio_eos_token": "<|audio_eos|>",
    "audio_eos_token_id": 128012,
    "audio_ffn_hidden_size": 3072,
    "audio_ffn_intermediate_size": 8192,
    "audio_in_token": "<|AUDIO|>",
    "audio_in_token_idx": 128015,
    "audio_num_codebooks": 8,
    "audio_out_bos_token": "<|audio_out_bos|>",
    "audio_out_bos_token_id": 128013,
    "audio_out_token": "<|AUDIO_OUT|>",
    "audio_out_token_idx": 128016,
    "audio_stream_bos_id": 1024,
    "audio_stream_eos_id": 1025,
    "audio_tokenizer_config": None,
    "encode_audio_in_tokens": True,
    "encode_whisper_embed": False,
    "hidden_size": 3072,
    "pad_token_id": 128001,
    "rq_transformer_hidden_size": None,
    "rq_transformer_intermediate_size": None,
    "rq_transformer_num_attention_heads": None,
    "rq_transformer_num_hidden_layers": 3,
    "rq_transformer_num_key_value_heads": None,
    "skip_audio_tower": True,
    "text_config": {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "head_dim": 128,
        "hidden_act": "silu",
        "hidden_size": 3072,
        "initializer_range": 0.02,
        "intermediate_size": 8192,
        "max_position_embeddings": 131072,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 24,
        "num_hidden_layers": 28,
        "num_key_value_heads": 8,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                         "original_max_position_embeddings": 8192, "rope_type": "llama3"},
        "rope_theta": 500000.0,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": 128256,
    },
    "torch_dtype": "bfloat16",
    "use_audio_out_embed_projector": False,
    "use_audio_out_self_attention": 0,
    "use_delay_pattern": True,
    "use_rq_transformer": False,
}

# The release's model.safetensors.index.json: 397 tensor names in 3 shards, metadata.total_size
# 11542566912 bytes (bfloat16 -> 5,771,283,456 parameters). Its names, as patterns:
RELEASE_INDEX_TOTAL_BYTES = 11542566912
RELEASE_INDEX_TOP = ["audio_codebook_embeddings.weight", "audio_decoder_proj.audio_lm_head.weight",
                     "audio_decoder_proj.text_lm_head.weight", "embed_tokens.weight", "norm.weight"]
RELEASE_INDEX_PER_LAYER = [
    "audio_input_layernorm.weight", "audio_mlp.down_proj.weight", "audio_mlp.gate_proj.weight",
    "audio_mlp.up_proj.weight", "audio_post_attention_layernorm.weight", "input_layernorm.weight",
    "mlp.down_proj.weight", "mlp.gate_proj.weight", "mlp.up_proj.weight",
    "post_attention_layernorm.weight", "self_attn.k_proj.weight", "self_attn.o_proj.weight",
    "self_attn.q_proj.weight", "self_attn.v_proj.weight",
]
SOURCES = {
    "tokenizer": "bosonai/higgs-audio-v2-tokenizer config.json (keys n_filters, D=256, codebook_dim=64, "
                 "target_bandwidths, ratios [8,5,4,2,3], sample_rate 24000, bins 1024, n_q 8, "
                 "semantic_techer hubert_base_general); semantic_model = transformers HubertConfig() "
                 "defaults (= hubert-base; the transformers port builds the same)",
    "llm": "bosonai/higgs-audio-v2-generation-3B-base config.json (transformers_version 4.46.3) and its "
           "model.safetensors.index.json (397 names, total_size 11542566912 bytes), as mirrored in a "
           "public repository holding the hub files",
}


def shapes(module) -> dict[str, list[int]]:
    return {k: list(v.shape) for k, v in module.state_dict().items()}


def count(module) -> dict[str, int]:
    params = sum(p.numel() for p in module.parameters())
    state = sum(v.numel() for v in module.state_dict().values())
    return {"parameters": params, "state_dict_elements": state}


def tokenizer_keys():
    hat = common.boson_tokenizer_module(widths=None)  # release widths; only the HuBERT load patched
    with torch.device("meta"):
        tok = hat.HiggsAudioTokenizer(**TOKENIZER_RELEASE_CONFIG, device="meta")
    keys = shapes(tok)
    hubert = sum(p.numel() for p in tok.semantic_model.parameters())
    totals = {**count(tok), "semantic_model_parameters": hubert,
              "parameters_without_semantic_model": count(tok)["parameters"] - hubert}
    weight_norm = {
        "dac_convs": sorted({re.sub(r"\d+", "N", k) for k in keys if k.endswith((".weight_g", ".weight_v"))})[:4],
        "hubert_pos_conv": [k for k in keys if "pos_conv_embed" in k],
    }
    return {
        "source": SOURCES["tokenizer"],
        "built_with": "boson_multimodal 0.1.1 HiggsAudioTokenizer(**config) on the meta device "
                      "(scripts/release_fixtures/keys.py)",
        "config": TOKENIZER_RELEASE_CONFIG,
        "totals": totals,
        "weight_norm_key_forms": weight_norm,
        "keys": keys,
    }


def llm_keys():
    m = common.boson_llm_module()
    config = m.HiggsAudioConfig(**copy.deepcopy(LLM_RELEASE_CONFIG))
    with torch.device("meta"):
        model = m.HiggsAudioModel(config)
    keys = shapes(model)
    expected = set(RELEASE_INDEX_TOP) | {f"layers.{i}.{n}" for i in range(28) for n in RELEASE_INDEX_PER_LAYER}
    assert set(keys) == expected, (sorted(set(keys) - expected)[:5], sorted(expected - set(keys))[:5])
    totals = count(model)
    assert totals["state_dict_elements"] * 2 == RELEASE_INDEX_TOTAL_BYTES, totals
    return {
        "source": SOURCES["llm"],
        "built_with": "boson_multimodal 0.1.1 HiggsAudioModel(HiggsAudioConfig(**config)) on the meta device "
                      "(scripts/release_fixtures/keys.py)",
        "matches_release_index": {"names": len(expected), "same_names": True,
                                  "bf16_bytes": RELEASE_INDEX_TOTAL_BYTES, "same_total_size": True},
        "config": LLM_RELEASE_CONFIG,
        "totals": totals,
        "keys": keys,
    }


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    for name, fn in (("tokenizer_original", tokenizer_keys), ("llm_original", llm_keys)):
        data = fn()
        with open(os.path.join(OUT, f"{name}.json"), "w") as f:
            json.dump(data, f, indent=1)
            f.write("\n")
        common.log(f"{name}: {len(data['keys'])} keys, totals {data['totals']}")


if __name__ == "__main__":
    main()
