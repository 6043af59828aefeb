"""Sizes of a Higgs TTS 3 LLM: a Qwen3 text backbone plus the fused audio table (docs/model.md,
"The next family: Higgs TTS 3").

Sizes have one table, as for DualFFN (higgs_train/llm/config.py): configs/model/llm/tts3_*.yaml.
The dataclass has no defaults for what those files state, so a config is a named size with
overrides, or every field given (a release config.json read by layouts.py, a test's own size):

    cfg = Tts3Config.preset("tts3_full")                  # the release's shape: 4,043,480,576 parameters
    cfg = Tts3Config.preset("tts3_tiny", vocab_size=400)  # tts3_tiny.yaml leaves vocab_size to the tokenizer

The release: 36 Qwen3 layers, hidden 2560, 32 query and 8 key/value heads of 128, SwiGLU 9728,
vocabulary 151,936, the text head tied to the text embedding, and 8 codebooks of 1024 codes
(+ stream BOS 1024 and EOS 1025) whose [8 * 1026, 2560] table is also the audio head. Its
config.json may leave rope_theta null: its reference code then uses 1e6, and so does the reader.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar

from higgs_train.llm.config import DualFFNConfig


@dataclass
class Tts3Config:
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
    codebook_size: int                   # + stream BOS and EOS rows per codebook
    tie_word_embeddings: bool = True     # the text head is the text embedding
    tie_audio_embeddings: bool = True    # the audio head is the fused audio table
    # plain RoPE: higgs_train.llm.model.rope_inv_freq reads this (the release has no scaling)
    rope_scaling: ClassVar[None] = None

    audio_vocab = property(lambda self: self.codebook_size + 2, doc="codes + stream BOS + stream EOS")
    audio_bos = property(lambda self: self.codebook_size, doc="stream begin-of-stream code (1024)")
    audio_eos = property(lambda self: self.codebook_size + 1, doc="stream end-of-stream code (1025)")

    def is_dual(self, layer: int) -> bool:
        """No layer has DualFFN's audio norms and FFN (what higgs_train.llm.model.Block asks)."""
        return False

    @classmethod
    def from_dict(cls, d: dict) -> "Tts3Config":
        unknown = set(d) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown Tts3Config keys: {sorted(unknown)}")
        return cls(**d)

    # configs/model/llm/SIZE.yaml (the size table training composes), with overrides: DualFFNConfig's
    preset = classmethod(DualFFNConfig.preset.__func__)
