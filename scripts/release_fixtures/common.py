"""The ORIGINAL Higgs Audio v2 code (boson-multimodal 0.1.1), imported in its throwaway venv with
the fewest patches that let it run offline at tiny widths. Used only by the fixture scripts here:

    /tmp/boson_venv/bin/python scripts/release_fixtures/tokenizer.py   (venv: setup_venv.sh)

The patches (nothing of the original is re-implemented; its classes build every module):
  (a) `higgs_audio_tokenizer.AutoModel` (the module-level name the tokenizer's __init__ calls as
      `AutoModel.from_pretrained("bosonai/hubert_base", trust_remote_code=True)`) becomes a stand-in
      whose from_pretrained returns a seeded random `transformers.HubertModel` of a given config
      (tiny for fixtures, hubert-base for the full-size key list). Nothing is downloaded.
  (b) widths the original hard-codes become the tiny ones: `higgs_audio_tokenizer.dac2` (the
      module name it calls as `dac2.Encoder(64, ratios, D)` and `dac2.Decoder(D, 1024, ratios)`)
      becomes a namespace whose Encoder/Decoder call the original classes with d_model / channels
      replaced; the semantic width (the literal 768 assigned to `self.semantic_dim` and
      `self.encoder_semantic_dim` in __init__) is swapped in a subclass's __setattr__, so the
      original __init__ body runs unchanged. `higgs_audio_tokenizer.HiggsAudioTokenizer` is bound
      to that subclass so the original `load_higgs_audio_tokenizer` builds it too.
Full size (`widths=None`) applies (a) only, with hubert-base's config.
"""
from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import types
from dataclasses import dataclass

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(REPO, "tests", "fixtures", "release")
SEED = 1234

# The width the original code writes as a literal for HuBERT-base features (semantic_dim and
# encoder_semantic_dim in HiggsAudioTokenizer.__init__).
ORIGINAL_SEMANTIC_DIM = 768


@dataclass(frozen=True)
class TinyWidths:
    """Replacements for the widths the original hard-codes (release values in comments)."""

    encoder_d_model: int = 2  # dac2.Encoder(64, ...): doubles per block -> 2*2**5 = 64 (release 2048)
    decoder_channels: int = 64  # dac2.Decoder(D, 1024, ...): halves per block -> 2 (release 32)
    # semantic_dim = encoder_semantic_dim (release 768 = hubert-base). 64, not 128: the semantic
    # conv encoder/decoder are hidden x hidden x 3 convs, and 128 alone would take ~4 MB.
    hubert_hidden: int = 64
    hubert_heads: int = 1  # head dim 64 as hubert-base, so a loader can infer heads = hidden / 64
    hubert_layers: int = 2  # release 12
    hubert_intermediate: int = 128  # release 3072
    hubert_conv_dim: int = 32  # per feature-extractor conv layer (release 512)


def seed_everything(seed: int = SEED) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def hubert_config(widths: TinyWidths | None):
    """hubert-base's config (facebook/hubert-base-ls960 = transformers' HubertConfig defaults:
    conv kernels (10,3,3,3,3,2,2), strides (5,2,2,2,2,2,2), group norm, no conv bias, pos conv 128
    wide in 16 groups); tiny widths keep every one of those and shrink only the widths."""
    from transformers import HubertConfig

    if widths is None:
        return HubertConfig()
    w = widths
    return HubertConfig(
        hidden_size=w.hubert_hidden,
        num_hidden_layers=w.hubert_layers,
        num_attention_heads=w.hubert_heads,
        intermediate_size=w.hubert_intermediate,
        conv_dim=(w.hubert_conv_dim,) * 7,
        conv_kernel=(10, 3, 3, 3, 3, 2, 2),
        conv_stride=(5, 2, 2, 2, 2, 2, 2),
        feat_extract_norm="group",
        num_conv_pos_embeddings=128,
        num_conv_pos_embedding_groups=16,
    )


class _RandomHubertHub:
    """Stands in for `transformers.AutoModel` inside higgs_audio_tokenizer.py: the only call it
    gets is from_pretrained("bosonai/hubert_base", trust_remote_code=True)."""

    def __init__(self, config, seed: int):
        self.config, self.seed = config, seed

    def from_pretrained(self, name, **kwargs):
        from transformers import HubertModel

        assert name == "bosonai/hubert_base", f"unexpected hub load {name!r}"
        # Its own generator state, so the HuBERT weights do not depend on what ran before.
        state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)
        try:
            model = HubertModel(self.config)
        finally:
            torch.random.set_rng_state(state)
        return model


def boson_tokenizer_module(widths: TinyWidths | None = TinyWidths(), hubert_seed: int = SEED):
    """The original `boson_multimodal.audio_processing.higgs_audio_tokenizer` module, patched as the
    module docstring says. `widths=None`: release widths (only the HuBERT load is patched).
    Calling it again re-patches (the last call wins)."""
    import boson_multimodal.audio_processing.higgs_audio_tokenizer as hat
    from boson_multimodal.audio_processing.descriptaudiocodec.dac.model import dac as dac_orig

    if not hasattr(hat, "_ORIGINAL"):
        hat._ORIGINAL = types.SimpleNamespace(
            AutoModel=hat.AutoModel, dac2=hat.dac2, HiggsAudioTokenizer=hat.HiggsAudioTokenizer
        )
    orig = hat._ORIGINAL
    hat.AutoModel = _RandomHubertHub(hubert_config(widths), hubert_seed)
    if widths is None:
        hat.dac2 = orig.dac2
        hat.HiggsAudioTokenizer = orig.HiggsAudioTokenizer
        return hat

    w = widths

    def encoder(d_model, strides, d_latent):
        assert d_model == 64, d_model  # the literal in the original; anything else: code changed
        return dac_orig.Encoder(w.encoder_d_model, strides, d_latent)

    def decoder(input_channel, channels, rates):
        assert channels == 1024, channels
        return dac_orig.Decoder(input_channel, w.decoder_channels, rates)

    hat.dac2 = types.SimpleNamespace(Encoder=encoder, Decoder=decoder)

    class TinyHiggsAudioTokenizer(orig.HiggsAudioTokenizer):
        """The original class; only the 768 literal for the semantic width is swapped."""

        def __setattr__(self, name, value):
            if name in ("semantic_dim", "encoder_semantic_dim") and value == ORIGINAL_SEMANTIC_DIM:
                value = w.hubert_hidden
            super().__setattr__(name, value)

    TinyHiggsAudioTokenizer.__name__ = "HiggsAudioTokenizer"
    hat.HiggsAudioTokenizer = TinyHiggsAudioTokenizer
    return hat


def boson_llm_module():
    """The original `boson_multimodal.model.higgs_audio` package (HiggsAudioConfig, HiggsAudioModel);
    it needs no patch to build from a config."""
    import boson_multimodal.model.higgs_audio as m

    return m


def espeak(text: str, voice: str = "en-us", speed: int = 150, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Real synthetic speech: espeak-ng's float32 waveform at its native rate (22050 Hz)."""
    import soundfile as sf

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "out.wav")
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", path, text],
            check=True,
            capture_output=True,
        )
        wav, sr = sf.read(path, dtype="float32")
    return wav, sr


def resample(wav: np.ndarray, sr: int, target: int) -> np.ndarray:
    """soxr's high-quality resampler (float32 in, float32 out)."""
    import soxr

    return wav if sr == target else soxr.resample(wav, sr, target, quality="HQ").astype(np.float32)


def log(msg: str) -> None:
    print(f"[release_fixtures] {msg}", file=sys.stderr, flush=True)
