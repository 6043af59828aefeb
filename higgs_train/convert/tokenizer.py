"""python -m higgs_train.convert for audio tokenizers: read any layout (higgs_train/tokenizer/layouts.py,
the one a Higgs TTS 3 checkpoint bundles included), write ours, the transformers port's or the original
release's."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from higgs_train.files import atomic_path, write_text_atomic
from higgs_train.tokenizer.config import TokenizerConfig
from higgs_train.tokenizer.layouts import (ORIGINAL_FIXED, READERS, native_to_hf_state, native_to_original,
                                          read_bundled)

log = logging.getLogger(__name__)


# ---- writing ------------------------------------------------------------------------------
def write_native(cfg: TokenizerConfig, state: dict, dst: Path) -> None:
    from higgs_train.tokenizer import AudioTokenizer

    AudioTokenizer.from_state(cfg, state).save_pretrained(dst)  # builds it: every key checked


def hf_config(cfg: TokenizerConfig):
    from transformers import HiggsAudioV2TokenizerConfig

    teacher = {**cfg.teacher_config, "mask_time_prob": 0.0}  # the port's HuBERT: no masking vector
    return HiggsAudioV2TokenizerConfig(
        acoustic_model_config={"encoder_hidden_size": cfg.channels, "downsampling_ratios": list(cfg.strides),
                               "decoder_hidden_size": cfg.decoder_channels, "upsampling_ratios": list(cfg.strides),
                               "hidden_size": cfg.latent_dim},
        semantic_model_config=teacher, target_bandwidths=[0.5, 1, 1.5, 2],  # 2 kbps = 8 codebooks
        sample_rate=cfg.sample_rate, codebook_size=cfg.codebook_size, codebook_dim=cfg.codebook_dim,
        semantic_sample_rate=16000, downsample_factor=320)


def write_hf(cfg: TokenizerConfig, state: dict, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    c = hf_config(cfg)
    c.architectures = ["HiggsAudioV2TokenizerModel"]
    out = {k: v.contiguous() for k, v in native_to_hf_state(state).items()}
    with atomic_path(dst / "model.safetensors") as tmp:
        save_file(out, str(tmp), metadata={"format": "pt"})
    write_text_atomic(dst / "config.json", c.to_json_string())  # last: a whole model, or no config


def write_original(cfg: TokenizerConfig, state: dict, dst: Path) -> None:
    if (cfg.channels, cfg.decoder_channels, cfg.teacher_config.get("hidden_size")) != (64, 1024, 768):
        log.warning("the original code hard-codes widths 64 / 1024 / 768 (encoder, decoder, HuBERT); this "
                    "tokenizer has %s / %s / %s: the original loader builds it only with those literals changed",
                    cfg.channels, cfg.decoder_channels, cfg.teacher_config.get("hidden_size"))
    dst.mkdir(parents=True, exist_ok=True)
    config = {"n_filters": 32, "D": cfg.latent_dim, "codebook_dim": cfg.codebook_dim, **ORIGINAL_FIXED}
    with atomic_path(dst / "model.pth") as tmp:
        torch.save({native_to_original(k): v.contiguous() for k, v in state.items()}, str(tmp))
    write_text_atomic(dst / "config.json", json.dumps(config, indent=2) + "\n")  # last, as above


def convert(src, dst, src_layout: str, to: str, codec_config=None) -> None:
    """python -m higgs_train.convert src=DIR dst=DIR to=native|hf|original (for tokenizers; a Higgs
    TTS 3 checkpoint's bundled one at codec_config, read_bundled)."""
    src, dst = Path(src), Path(dst)
    cfg, state = read_bundled(src, codec_config) if src_layout == "bundled" else READERS[src_layout](src)
    {"native": write_native, "hf": write_hf, "original": write_original}[to](cfg, state, dst)
