"""The DualFFN LLM's config: one dataclass, stored as config.json next to the weights.

Sizes have one table: configs/model/llm/*.yaml (tiny, full). The dataclass has no defaults for
what those files state, so a config is either a named size with overrides,

    cfg = DualFFNConfig.preset("full")                   # the released shape (configs/model/llm/full.yaml)
    cfg = DualFFNConfig.preset("tiny", vocab_size=400)   # tiny.yaml leaves vocab_size to the tokenizer

or every field given (a release config.json read by higgs_train/llm/layouts.py, a test's own size).
"""
from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass
class DecoderConfig:
    """What every family's LLM config holds: the decoder's sizes and the codebook shape (a family's
    config adds its own fields: DualFFNConfig below, higgs_train/families/higgs_tts3/config.py)."""
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    num_codebooks: int
    codebook_size: int                    # + stream BOS and EOS rows per codebook

    @property
    def audio_vocab(self) -> int:
        return self.codebook_size + 2

    @property
    def audio_bos(self) -> int:
        return self.codebook_size

    @property
    def audio_eos(self) -> int:
        return self.codebook_size + 1

    @classmethod
    def from_dict(cls, d: dict):
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys: {sorted(unknown)}")
        return cls(**d)

    @classmethod
    def preset(cls, size: str, **overrides):
        """configs/model/llm/SIZE.yaml (the size table training composes), with `overrides`."""
        from higgs_train.config import model_size

        return cls.from_dict({**model_size("llm", size), **overrides})


@dataclass
class DualFFNConfig(DecoderConfig):
    # llama3 RoPE scaling ({"factor", "low_freq_factor", "high_freq_factor",
    # "original_max_position_embeddings"}) or None for plain RoPE.
    rope_scaling: dict | None
    dual_layers: list[int] | None         # indices of DualFFN layers; None = every layer
    # Text-token ids by role (keys of layouts.RELEASE_TOKENS: audio_bos, audio_eos, audio_out_bos,
    # audio_delay, audio_in, audio_out, pad) as a release config states them; None: the text
    # tokenizer's. The forward pass reads neither this nor the next field: prompts do.
    special_tokens: dict[str, int] | None = None
    encode_audio_in_tokens: bool = False  # the release's flag: <|AUDIO|> (audio-in) positions carry codes

    def is_dual(self, layer: int) -> bool:
        return self.dual_layers is None or layer in self.dual_layers
