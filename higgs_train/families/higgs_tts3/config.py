"""Sizes of a Higgs TTS 3 LLM: a Qwen3 text backbone plus the fused audio table (docs/model.md,
"Higgs TTS 3").

The defaults are the release's shape (configs/model/llm/tts3_full.yaml states the same numbers,
tests/test_tts3_model.py checks that they agree): 36 Qwen3 layers, hidden 2560, 32 query and 8
key/value heads of 128, SwiGLU 9728, vocabulary 151,936, the text head tied to the text embedding,
and 8 codebooks of 1024 codes (+ stream BOS 1024 and EOS 1025) whose [8 * 1026, 2560] table is also
the audio head. The release's config.json may leave rope_theta null: its reference code then uses
1e6, and so does the reader (higgs_train/families/higgs_tts3/layouts.py).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import ClassVar


@dataclass
class Tts3Config:
    vocab_size: int = 151936
    hidden_size: int = 2560
    intermediate_size: int = 9728
    num_layers: int = 36
    num_heads: int = 32
    num_kv_heads: int = 8
    head_dim: int = 128
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    tie_word_embeddings: bool = True     # the text head is the text embedding
    num_codebooks: int = 8
    codebook_size: int = 1024            # + stream BOS and EOS rows per codebook
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
