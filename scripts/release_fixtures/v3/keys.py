"""The FULL-size Higgs TTS 3 key set (checkpoint name -> shape) and parameter counts, from the
REFERENCE classes (sglang-omni 0.1.9's HiggsTTSModel with the backbone stand-in of reference.py,
and transformers' HiggsAudioV2TokenizerModel for the bundled codec at the config sglang-omni
packages) built at the release configs on the meta device (no weights, no download).

    /tmp/v3_venv/bin/python scripts/release_fixtures/v3/keys.py

Writes tests/fixtures/release_v3/keys.json. Every checkpoint name is mapped forward through the
reference's own DiscreteWeightMapper + backbone prefix map and must land on a parameter of the
model (or be one the mapper drops: the bundled codec), so the list is the loader's view.
"""
from __future__ import annotations

import json
import os
import sys

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import reference as ref  # noqa: E402

CODEC_PREFIX = "tied.embedding.modality_embeddings.0.model."
# The release config.json as the issue of this work states it (bosonai/higgs-tts-3-4b): a Qwen3
# text_config whose rope_theta is null (the reference substitutes 1e6), audio 8 x 1026 tied.
RELEASE_CONFIG = {
    "architectures": ["HiggsMultimodalQwen3ForConditionalGeneration"],
    "model_type": "higgs_multimodal_qwen3",
    "audio_token_id": -100,
    "audio_encoder_config": {"encoder_type": "discrete", "num_codebooks": 8, "vocab_size": 1026,
                             "tie_word_embeddings": True},
    "text_config": {"model_type": "qwen3", "hidden_size": 2560, "num_hidden_layers": 36,
                    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
                    "intermediate_size": 9728, "vocab_size": 151936, "hidden_act": "silu",
                    "rms_norm_eps": 1e-6, "max_position_embeddings": 40960, "attention_bias": False,
                    "tie_word_embeddings": True, "rope_theta": None},
}
# Inverse of sglang_omni/models/higgs_tts/model.py:_BACKBONE_PREFIX_MAP and weight_loader.py's
# instance map (model parameter prefix -> checkpoint prefix).
TO_CHECKPOINT = [
    ("backbone.model.embed_tokens.", "tied.embedding.text_embedding."),
    ("backbone.model.layers.", "body.layers."),
    ("backbone.model.norm.", "body.norm."),
    ("backbone.lm_head.", "tied.head.text_head."),
    ("multimodal_embedding.modality_embedding_0.", "tied.embedding.modality_embeddings.0.embedding."),
    ("modality_head.", "tied.head.modality_heads.0."),
]


def checkpoint_name(param: str) -> str:
    for src, dst in TO_CHECKPOINT:
        if param.startswith(src):
            return dst + param[len(src):]
    raise KeyError(param)


def llm_keys():
    ns = ref.sglang_higgs()
    raw = {k: v for k, v in RELEASE_CONFIG.items() if k != "model_type"}
    config = ns.hf_config.HiggsMultimodalQwen3Config(**raw)
    with torch.device("meta"):
        model = ns.model.HiggsTTSModel(config)
    params = dict(model.named_parameters(remove_duplicate=False))
    ids = {}
    for n, p in params.items():
        ids.setdefault(id(p), []).append(n)
    tied_pairs = sorted(sorted(v) for v in ids.values() if len(v) > 1)
    # A name the loader reads: tied duplicates (lm_head when the text embeddings are tied; the
    # modality head when the audio table is tied) are not stored (the mapper/loader skip them).
    skip = {"backbone.lm_head.weight", "modality_head.weight"}
    keys = {checkpoint_name(n): list(p.shape) for n, p in params.items() if n not in skip}
    mapper = ns.weight_loader.DiscreteWeightMapper(text_prefix_map=ns.model._BACKBONE_PREFIX_MAP,
                                                   tie_modality=model.tie_modality)
    for k in keys:   # forward through the reference's own mapping lands on the same parameter
        mapped = mapper.map(k)
        assert mapped in params, (k, mapped)
    optional = {checkpoint_name(n): list(params[n].shape) for n in sorted(skip)}
    unique = sum(p.numel() for p in model.parameters())
    return model, keys, optional, tied_pairs, unique


def codec_keys():
    import importlib

    from transformers import HiggsAudioV2TokenizerConfig, HiggsAudioV2TokenizerModel

    ref.sglang_higgs()
    path = os.path.join(os.path.dirname(importlib.import_module("sglang_omni").__file__),
                        "models", "higgs_tts", "configs", "higgs_audio_v2_tokenizer.json")
    with torch.device("meta"):
        codec = HiggsAudioV2TokenizerModel(HiggsAudioV2TokenizerConfig.from_json_file(path))
    state = codec.state_dict()
    return ({CODEC_PREFIX + k: list(v.shape) for k, v in state.items()},
            sum(p.numel() for p in codec.parameters()), sum(v.numel() for v in state.values()))


def main():
    torch.set_num_threads(1)
    model, keys, optional, tied_pairs, unique = llm_keys()
    ckeys, codec_params, codec_state = codec_keys()
    stored = sum(torch.Size(s).numel() for s in keys.values())
    layer = {k.split(".", 3)[3]: s for k, s in keys.items() if k.startswith("body.layers.0.")}
    out = {
        "source": "the release config as stated in this work's brief (36 layers, hidden 2560, 32/8 heads, "
                  "head_dim 128, ffn 9728, vocab 151936, tied; audio 8 x 1026 tied); the codec config packaged "
                  "in sglang_omni/models/higgs_tts/configs/higgs_audio_v2_tokenizer.json",
        "built_with": "sglang-omni 0.1.9 HiggsTTSModel (backbone: transformers Qwen3ForCausalLM stand-in) and "
                      "transformers HiggsAudioV2TokenizerModel on the meta device (scripts/release_fixtures/v3/keys.py)",
        "config": RELEASE_CONFIG,
        "totals": {
            "llm_names": len(keys), "llm_parameters": stored, "llm_unique_parameters_in_model": unique,
            "per_layer_names": len(layer), "per_layer_parameters": sum(torch.Size(s).numel() for s in layer.values()),
            "codec_names": len(ckeys), "codec_parameters": codec_params, "codec_state_dict_elements": codec_state,
            "checkpoint_names_with_codec": len(keys) + len(ckeys), "checkpoint_elements_with_codec": stored + codec_state,
        },
        "tied_in_model": tied_pairs,
        "optional_keys": {"names": optional,
                          "why": "tied duplicates: tied.head.text_head.weight is skipped by the backbone loader "
                                 "when text_config.tie_word_embeddings; tied.head.modality_heads.0.* is read "
                                 "only when audio_encoder_config.tie_word_embeddings is false"},
        "per_layer": layer,
        "keys": {k: keys[k] for k in sorted(keys)},
        "codec_keys": {k: ckeys[k] for k in sorted(ckeys)},
    }
    path = os.path.join(ref.FIXTURES, "keys.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    ref.log(f"keys.json: {out['totals']}")


if __name__ == "__main__":
    main()
