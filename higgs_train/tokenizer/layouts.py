"""The audio tokenizer in three layouts, and bundled in a Higgs TTS 3 checkpoint (docs/model.md, "Released
layouts"): names, and reading any of them into ours (config + state dict in our names). Writing lives in
higgs_train/convert/tokenizer.py.


| layout   | files                            | names (examples)                                         |
| -------- | -------------------------------- | -------------------------------------------------------- |
| native   | config.json + model.safetensors  | acoustic_encoder.block.0.conv1.parametrizations.weight.original0 |
| hf       | config.json + model.safetensors  | acoustic_encoder.block.0.conv1.weight (weight norm folded) |
| original | config.json + model.pth          | encoder.block.1.block.4.weight_g, quantizer.vq.layers.0._codebook.embed |
| bundled  | a Higgs TTS 3 checkpoint         | tied.embedding.modality_embeddings.0.model. + the hf names |

A Higgs TTS 3 checkpoint (config.json model_type higgs_multimodal_qwen3) bundles its audio tokenizer
in its safetensors under BUNDLED_PREFIX, in the transformers port's names, and carries no tokenizer
config: the reference loaders build it at the v2 tokenizer's config, which is our full size. Reading
it takes only those tensors (safetensors reads one tensor at a time; the release is 8+ GB), with the
config from, in order: the caller's `codec_config`, a BUNDLED_CONFIG file next to the weights, our
full size (TokenizerConfig's defaults, RELEASE_TEACHER). `bundled_codec_tensors` hands the tensors as
stored to a v3 export, which copies them through.

Our names are the transformers port's (HiggsAudioV2TokenizerModel) with weight norm kept, so
native <-> hf folds / unfolds weight norm (w = g v / |v|; back: v = w, g = |w|, which gives
w again bit for bit), and native <-> original is the rename table below. Widths the original
code hard-codes (64, 1024, 768) are read from tensor shapes; its HuBERT's config (loaded from
the hub by the original code, not stored) is inferred from the HuBERT weights, with hubert-base
defaults for what shapes cannot tell (heads = hidden / 64, strides, activations).

Round trips are bit-exact: original -> native -> original and native -> original -> native
tensor for tensor; hf -> native -> hf tensor for tensor; native -> hf -> native in every
effective weight (g and v themselves are not stored in the hf layout).
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch
from safetensors.torch import load_file

from higgs_train.layout import detect
from higgs_train.tokenizer.config import CODEBOOK_SIZE, N_CODEBOOKS, SAMPLE_RATE, STRIDES, TokenizerConfig
from higgs_train.tokenizer.semantic import hf_config_dict

log = logging.getLogger(__name__)

WN = ("parametrizations.weight.original0", "parametrizations.weight.original1")  # (g, v)
HUBERT_HEAD_DIM = 64  # hubert-base: 768 / 12 heads
# The original config.json's keys with the values the release uses for what we do not vary.
ORIGINAL_FIXED = {"target_bandwidths": [0.5, 1, 1.5, 2, 4], "ratios": list(STRIDES), "sample_rate": SAMPLE_RATE,
                  "bins": CODEBOOK_SIZE, "n_q": N_CODEBOOKS, "semantic_techer": "hubert_base_general"}
RES = ("snake1", "conv1", "snake2", "conv2")  # DAC ResidualUnit.block order
BUNDLED_PREFIX = "tied.embedding.modality_embeddings.0.model."
BUNDLED_MODEL_TYPE = "higgs_multimodal_qwen3"   # a Higgs TTS 3 checkpoint's config.json model_type
BUNDLED_CONFIG = "codec_config.json"  # optional, next to its weights: transformers HiggsAudioV2TokenizerConfig kwargs
# The v2 tokenizer's config, which the reference loaders use for the bundled tokenizer: our full
# size (TokenizerConfig's defaults) with hubert-base's config as the port builds it (no masking vector).
RELEASE_TEACHER = {"model_type": "hubert", "mask_time_prob": 0.0}


# ---- names: original <-> native ---------------------------------------------------------
def original_to_native(key: str) -> str:
    k = re.sub(r"\.weight_g$", "." + WN[0], key)
    k = re.sub(r"\.weight_v$", "." + WN[1], k)
    if m := re.match(r"encoder\.block\.(\d+)\.(.*)$", k):
        i, rest = int(m[1]), m[2]
        if i == 0:
            return f"acoustic_encoder.conv1.{rest}"
        if i == len(STRIDES) + 1:
            return f"acoustic_encoder.snake1.{rest}"
        if i == len(STRIDES) + 2:
            return f"acoustic_encoder.conv2.{rest}"
        if m2 := re.match(r"block\.([0-2])\.block\.([0-3])\.(.*)$", rest):
            return f"acoustic_encoder.block.{i - 1}.res_unit{int(m2[1]) + 1}.{RES[int(m2[2])]}.{m2[3]}"
        if m2 := re.match(r"block\.([34])\.(.*)$", rest):
            return f"acoustic_encoder.block.{i - 1}.{'snake1' if m2[1] == '3' else 'conv1'}.{m2[2]}"
    if m := re.match(r"decoder_2\.model\.(\d+)\.(.*)$", k):
        i, rest = int(m[1]), m[2]
        if i == 0:
            return f"acoustic_decoder.conv1.{rest}"
        if i == len(STRIDES) + 1:
            return f"acoustic_decoder.snake1.{rest}"
        if i == len(STRIDES) + 2:
            return f"acoustic_decoder.conv2.{rest}"
        if m2 := re.match(r"block\.([01])\.(.*)$", rest):
            return f"acoustic_decoder.block.{i - 1}.{'snake1' if m2[1] == '0' else 'conv_t1'}.{m2[2]}"
        if m2 := re.match(r"block\.([2-4])\.block\.([0-3])\.(.*)$", rest):
            return f"acoustic_decoder.block.{i - 1}.res_unit{int(m2[1]) - 1}.{RES[int(m2[2])]}.{m2[3]}"
    if k.startswith(("encoder_semantic.", "decoder_semantic.")):
        return re.sub(r"\.conv\.(weight|bias)$", r".\1", k)  # the original's Conv1d wrapper
    for a, b in (("fc_prior.", "fc."), ("fc_post1.", "fc1."), ("fc_post2.", "fc2.")):
        if k.startswith(a):
            return b + k[len(a):]
    if m := re.match(r"quantizer\.vq\.layers\.(\d+)\.(_codebook|project_in|project_out)\.(.*)$", k):
        return f"quantizer.quantizers.{m[1]}.{'codebook' if m[2] == '_codebook' else m[2]}.{m[3]}"
    if k.startswith("semantic_model."):
        return k
    raise ValueError(f"original tokenizer weights: unknown tensor {key}")


def native_to_original(key: str) -> str:
    k = key.replace("." + WN[0], ".weight_g").replace("." + WN[1], ".weight_v")
    if k.startswith("semantic_model."):
        return key  # transformers' HuBERT names, its own weight norm included
    n = len(STRIDES)
    if m := re.match(r"acoustic_encoder\.(.*)$", k):
        r = m[1]
        for name, i in (("conv1.", 0), ("snake1.", n + 1), ("conv2.", n + 2)):
            if r.startswith(name):
                return f"encoder.block.{i}.{r[len(name):]}"
        b = re.match(r"block\.(\d+)\.(res_unit([1-3])\.(\w+)|snake1|conv1)\.(.*)$", r)
        if b[3]:
            return f"encoder.block.{int(b[1]) + 1}.block.{int(b[3]) - 1}.block.{RES.index(b[4])}.{b[5]}"
        return f"encoder.block.{int(b[1]) + 1}.block.{3 if b[2] == 'snake1' else 4}.{b[5]}"
    if m := re.match(r"acoustic_decoder\.(.*)$", k):
        r = m[1]
        for name, i in (("conv1.", 0), ("snake1.", n + 1), ("conv2.", n + 2)):
            if r.startswith(name):
                return f"decoder_2.model.{i}.{r[len(name):]}"
        b = re.match(r"block\.(\d+)\.(res_unit([1-3])\.(\w+)|snake1|conv_t1)\.(.*)$", r)
        if b[3]:
            return f"decoder_2.model.{int(b[1]) + 1}.block.{int(b[3]) + 1}.block.{RES.index(b[4])}.{b[5]}"
        return f"decoder_2.model.{int(b[1]) + 1}.block.{0 if b[2] == 'snake1' else 1}.{b[5]}"
    if k.startswith(("encoder_semantic.", "decoder_semantic.")):
        return k if re.search(r"res_units\.\d+\.conv2\.", k) else re.sub(r"\.(weight|bias)$", r".conv.\1", k)
    for a, b in (("fc.", "fc_prior."), ("fc1.", "fc_post1."), ("fc2.", "fc_post2.")):
        if k.startswith(a):
            return b + k[len(a):]
    if m := re.match(r"quantizer\.quantizers\.(\d+)\.(codebook|project_in|project_out)\.(.*)$", k):
        return f"quantizer.vq.layers.{m[1]}.{'_codebook' if m[2] == 'codebook' else m[2]}.{m[3]}"
    raise ValueError(f"native tokenizer weights: unknown tensor {key}")


# ---- weight norm: native <-> hf ---------------------------------------------------------
def _weight_normed(hf_key: str) -> bool:
    """Every conv weight of the acoustic encoder/decoder carries weight norm (Snake alphas do not)."""
    return hf_key.startswith(("acoustic_encoder.", "acoustic_decoder.")) and hf_key.endswith(".weight")


def native_to_hf_state(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if k == "semantic_model.masked_spec_embed":
            continue  # training-time masking vector; the port builds HuBERT without it
        acoustic = k.startswith(("acoustic_encoder.", "acoustic_decoder."))
        if acoustic and k.endswith(WN[1]):
            continue
        if acoustic and k.endswith(WN[0]):
            p = k[: -len(WN[0])]
            out[p + "weight"] = torch._weight_norm(state[p + WN[1]], v, 0)
        else:
            out[k] = v
    return out


def hf_to_native_state(state: dict) -> dict:
    out = {}
    for k, v in state.items():
        if _weight_normed(k):
            p = k[: -len("weight")]
            # the norm exactly as torch._weight_norm computes it, so g / |v| is 1.0 and the
            # folded weight is v again bit for bit (norm_except_dim rounds differently)
            ones = torch.ones(v.shape[0], *(1,) * (v.dim() - 1), dtype=v.dtype)
            out[p + WN[0]] = torch._weight_norm_interface(v, ones, 0)[1].view_as(ones)
            out[p + WN[1]] = v
        else:
            out[k] = v
    return out


# ---- HuBERT config from its weights (the original layout does not store it) -------------
def hubert_config_from_state(state: dict, prefix: str = "semantic_model.") -> dict:
    from transformers import HubertConfig

    s = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    if "feature_projection.projection.weight" not in s:
        raise ValueError(f"tokenizer weights hold no HuBERT ({prefix}feature_projection.projection.weight missing)")
    hidden = s["feature_projection.projection.weight"].shape[0]
    n_conv = len({int(m[1]) for k in s if (m := re.match(r"feature_extractor\.conv_layers\.(\d+)\.", k))})
    convs = [s[f"feature_extractor.conv_layers.{i}.conv.weight"] for i in range(n_conv)]
    pos_v = s.get("encoder.pos_conv_embed.conv." + WN[1], s.get("encoder.pos_conv_embed.conv.weight_v"))
    layer_norm = "feature_extractor.conv_layers.1.layer_norm.weight" in s
    base = HubertConfig()
    cfg = {
        "model_type": "hubert",
        "hidden_size": hidden,
        "num_attention_heads": max(1, hidden // HUBERT_HEAD_DIM),
        "num_hidden_layers": len({int(m[1]) for k in s if (m := re.match(r"encoder\.layers\.(\d+)\.", k))}),
        "intermediate_size": s["encoder.layers.0.feed_forward.intermediate_dense.weight"].shape[0],
        "conv_dim": [int(w.shape[0]) for w in convs],
        "conv_kernel": [int(w.shape[2]) for w in convs],
        "conv_stride": list(base.conv_stride) if n_conv == len(base.conv_stride) else
        [5] + [2] * (n_conv - 1),
        "conv_bias": "feature_extractor.conv_layers.0.conv.bias" in s,
        "feat_extract_norm": "layer" if layer_norm else "group",
        "do_stable_layer_norm": layer_norm,  # hubert-large's pairing (shapes cannot tell)
        "feat_proj_layer_norm": "feature_projection.layer_norm.weight" in s,
        "num_conv_pos_embeddings": int(pos_v.shape[2]),
        "num_conv_pos_embedding_groups": hidden // int(pos_v.shape[1]),
        "mask_time_prob": base.mask_time_prob if "masked_spec_embed" in s else 0.0,
    }
    return cfg


# ---- reading ------------------------------------------------------------------------------
def _json(path: Path) -> dict:
    return json.loads(path.read_text())


def _need(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"tokenizer weights missing: {path}")
    return path


def _check(layout: str, field: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{layout} tokenizer config: {field}={value!r} cannot be reproduced here "
                         f"(supported: {' or '.join(map(repr, allowed))})")


def read_native(d: Path) -> tuple[TokenizerConfig, dict]:
    raw = _json(d / "config.json")
    raw.pop("model_type", None)
    state = load_file(str(_need(d / "model.safetensors")))
    return TokenizerConfig.from_dict(raw), state


def read_original(d: Path) -> tuple[TokenizerConfig, dict]:
    raw = _json(d / "config.json")
    for field, allowed in (("sample_rate", [SAMPLE_RATE]), ("ratios", [list(STRIDES)]), ("bins", [CODEBOOK_SIZE]),
                           ("n_q", [N_CODEBOOKS]), ("semantic_techer", ["hubert_base", "hubert_base_general"]),
                           ("downsample_mode", ["step_down"]), ("merge_mode", ["concat"]), ("vq_scale", [1]),
                           ("semantic_sample_rate", [None, 16000])):
        default = {"downsample_mode": "step_down", "merge_mode": "concat", "vq_scale": 1,
                   "semantic_sample_rate": None, "ratios": [8, 5, 4, 2], "sample_rate": 16000,
                   "bins": 1024, "n_q": 8, "semantic_techer": "hubert_base_general"}.get(field)
        _check("original", field, list(raw[field]) if field == "ratios" and field in raw else raw.get(field, default),
               allowed)
    if raw.get("codebook_dim") is None:
        raise ValueError("original tokenizer config: codebook_dim=None (RVQ without projections) cannot be "
                         "reproduced here (supported: an integer)")
    sd = torch.load(str(_need(d / "model.pth")), map_location="cpu", weights_only=True)
    state = {original_to_native(k): v for k, v in sd.items()}
    cfg = TokenizerConfig(
        channels=int(state["acoustic_encoder.conv1." + WN[1]].shape[0]),
        decoder_channels=int(state["acoustic_decoder.conv1." + WN[1]].shape[0]),
        latent_dim=int(state["acoustic_encoder.conv2." + WN[1]].shape[0]),
        codebook_dim=int(state["quantizer.quantizers.0.codebook.embed"].shape[1]),
        teacher_config=hubert_config_from_state(state))
    for field, ours in (("D", cfg.latent_dim), ("codebook_dim", cfg.codebook_dim)):
        if raw.get(field, ours) != ours:
            raise ValueError(f"original tokenizer config: {field}={raw[field]} but model.pth holds {ours}")
    # the original's `inited` flag and old-style pos-conv weight norm, in our names
    return cfg, state


def config_from_hf(c) -> TokenizerConfig:
    """Our config of a transformers HiggsAudioV2TokenizerConfig; ValueError on what we do not reproduce."""
    ac, sem = c.acoustic_model_config, c.semantic_model_config
    for field, value, allowed in (
            ("sample_rate", c.sample_rate, [SAMPLE_RATE]),
            ("acoustic_model_config.downsampling_ratios", list(ac.downsampling_ratios), [list(STRIDES)]),
            ("acoustic_model_config.upsampling_ratios", list(ac.upsampling_ratios), [list(STRIDES)]),
            ("codebook_size", c.codebook_size, [CODEBOOK_SIZE]), ("num_quantizers", c.num_quantizers, [N_CODEBOOKS]),
            ("semantic_sample_rate", c.semantic_sample_rate, [16000]),
            ("semantic_downsample_factor", c.semantic_downsample_factor, [2]),
            ("kernel_size", c.kernel_size, [3]), ("unit_kernel_size", c.unit_kernel_size, [3]),
            ("channel_ratios", list(c.channel_ratios), [[1, 1]]), ("strides", list(c.strides), [[1, 1]]),
            ("block_dilations", list(c.block_dilations), [[1, 1]]),
            ("semantic_model_config.model_type", sem.model_type, ["hubert"])):
        _check("hf", field, value, allowed)
    teacher = hf_config_dict(sem)
    teacher["mask_time_prob"] = sem.mask_time_prob
    return TokenizerConfig(channels=ac.encoder_hidden_size, decoder_channels=ac.decoder_hidden_size,
                           latent_dim=ac.hidden_size, codebook_dim=c.codebook_dim, teacher_config=teacher)


def read_hf(d: Path) -> tuple[TokenizerConfig, dict]:
    from transformers import HiggsAudioV2TokenizerConfig

    cfg = config_from_hf(HiggsAudioV2TokenizerConfig.from_pretrained(str(d)))
    return cfg, hf_to_native_state(load_file(str(_need(d / "model.safetensors"))))


# ---- bundled in a Higgs TTS 3 checkpoint -------------------------------------------------
def bundled_names(d: Path):
    """(the checkpoint's reader, its names under BUNDLED_PREFIX): safetensors headers only (a v3
    export copies the tensors through with them: higgs_train/families/higgs_tts3/checkpoints.py)."""
    from higgs_train.llm.checkpoints import Checkpoint

    ck = Checkpoint(d)
    return ck, sorted(n for n in ck.where if n.startswith(BUNDLED_PREFIX))


def bundles_tokenizer(model_dir) -> bool:
    """A Higgs TTS 3 checkpoint (config.json's model_type), or weights holding BUNDLED_PREFIX names."""
    d = Path(model_dir)
    try:
        if _json(d / "config.json").get("model_type") == BUNDLED_MODEL_TYPE:
            return True
    except (OSError, ValueError, AttributeError):
        pass
    index = d / "model.safetensors.index.json"
    if index.is_file():
        return any(n.startswith(BUNDLED_PREFIX) for n in _json(index).get("weight_map", {}))
    try:
        return bool(bundled_names(d)[1])
    except (OSError, ValueError):   # no weights, or not safetensors
        return False


def bundled_codec_tensors(model_dir) -> dict[str, torch.Tensor]:
    """The audio tokenizer a Higgs TTS 3 checkpoint bundles: {name as stored (BUNDLED_PREFIX ...):
    tensor as stored}, read one tensor at a time (the LLM's weights are never loaded), for an export
    to copy through. ValueError naming the directory when it bundles none."""
    d = Path(model_dir)
    ck, names = bundled_names(d)
    if not names:
        raise ValueError(f"{d} bundles no audio tokenizer: its weights hold no tensor named {BUNDLED_PREFIX}*; "
                         "give tokenizer= an audio tokenizer directory")
    return {n: ck.get(n) for n in names}


def bundled_hf_config(model_dir, codec_config=None):
    """The bundled tokenizer's HiggsAudioV2TokenizerConfig from `codec_config` (a dict, or a JSON
    file's path) or BUNDLED_CONFIG next to the weights; None when neither: RELEASE_CODEC then."""
    from transformers import HiggsAudioV2TokenizerConfig

    if codec_config is None and (Path(model_dir) / BUNDLED_CONFIG).is_file():
        codec_config = Path(model_dir) / BUNDLED_CONFIG
    if codec_config is None:
        return None
    raw = dict(codec_config) if isinstance(codec_config, dict) else _json(Path(codec_config))
    raw.pop("model_type", None)
    return HiggsAudioV2TokenizerConfig(**raw)


def read_bundled(d: Path, codec_config=None) -> tuple[TokenizerConfig, dict]:
    c = bundled_hf_config(d, codec_config)
    cfg = config_from_hf(c) if c is not None else TokenizerConfig(teacher_config=dict(RELEASE_TEACHER))
    # the reference runs the tokenizer in fp32 whatever the checkpoint's dtype
    state = {k[len(BUNDLED_PREFIX):]: v.float() if v.is_floating_point() else v
             for k, v in bundled_codec_tensors(d).items()}
    _check_widths(d, cfg, state, "the v2 release's (our full size)" if c is None else
                  str(codec_config if codec_config is not None else d / BUNDLED_CONFIG))
    return cfg, hf_to_native_state(state)


def _check_widths(d: Path, cfg: TokenizerConfig, state: dict, source: str) -> None:
    """One line naming the width where the bundled tensors and the config disagree (before a build
    would list every mismatched tensor)."""
    from transformers import HubertConfig

    for field, name, dim, want in (
            ("channels", "acoustic_encoder.conv1.weight", 0, cfg.channels),
            ("decoder_channels", "acoustic_decoder.conv1.weight", 0, cfg.decoder_channels),
            ("latent_dim", "acoustic_encoder.conv2.weight", 0, cfg.latent_dim),
            ("codebook_dim", "quantizer.quantizers.0.codebook.embed", 1, cfg.codebook_dim),
            ("semantic hidden_size", "semantic_model.feature_projection.projection.weight", 0,
             cfg.teacher_config.get("hidden_size", HubertConfig().hidden_size))):
        if name in state and state[name].shape[dim] != want:
            raise ValueError(f"{d}: the bundled audio tokenizer has {field} {state[name].shape[dim]} ({name}), "
                             f"its config ({source}) says {want}: pass its own codec_config")


READERS = {"native": read_native, "hf": read_hf, "original": read_original, "bundled": read_bundled}


def tokenizer_layout(model_dir) -> str:
    """The layout of an audio tokenizer directory ('bundled': a Higgs TTS 3 checkpoint); ValueError
    when it holds an LLM without one."""
    if bundles_tokenizer(model_dir):
        return "bundled"
    kind, layout = detect(model_dir)
    if kind != "tokenizer":
        raise ValueError(f"{model_dir} holds an LLM ({layout} layout), not an audio tokenizer")
    return layout


def codebook_shape(model_dir, codec_config=None) -> tuple[int | None, int | None]:
    """(codebooks, codes per codebook) of a tokenizer directory in any layout, from its config.json
    alone (no weights read: cheap enough to check before a run)."""
    d = Path(model_dir)
    layout = tokenizer_layout(d)
    _no_codec_config(layout, codec_config)
    if layout == "bundled":
        c = bundled_hf_config(d, codec_config)
        return (N_CODEBOOKS, CODEBOOK_SIZE) if c is None else (c.num_quantizers, c.codebook_size)
    raw = _json(d / "config.json")
    if layout == "original":   # the release's config.json: n_q codebooks of `bins` codes
        return raw.get("n_q"), raw.get("bins")
    if layout == "hf":
        from transformers import HiggsAudioV2TokenizerConfig

        c = HiggsAudioV2TokenizerConfig.from_dict(raw)
        return c.num_quantizers, c.codebook_size
    return raw.get("n_codebooks"), raw.get("codebook_size")


def _no_codec_config(layout: str, codec_config) -> None:
    if codec_config is not None and layout != "bundled":
        raise ValueError(f"codec_config is read for a tokenizer bundled in a Higgs TTS 3 checkpoint; this is a "
                         f"{layout} tokenizer directory, whose config.json says it all")


def read(model_dir, codec_config=None) -> tuple[TokenizerConfig, dict]:
    """Any tokenizer directory -> (our config, a state dict in our names). codec_config: the config
    of a tokenizer bundled in a Higgs TTS 3 checkpoint (read_bundled)."""
    d = Path(model_dir)
    layout = tokenizer_layout(d)
    _no_codec_config(layout, codec_config)
    return read_bundled(d, codec_config) if layout == "bundled" else READERS[layout](d)
