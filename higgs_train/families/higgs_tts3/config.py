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

from dataclasses import dataclass
from typing import ClassVar

from higgs_train.llm.config import DecoderConfig


@dataclass
class Tts3Config(DecoderConfig):
    tie_word_embeddings: bool = True     # the text head is the text embedding
    tie_audio_embeddings: bool = True    # the audio head is the fused audio table
    # plain RoPE: higgs_train.llm.model.rope_inv_freq reads this (the release has no scaling)
    rope_scaling: ClassVar[None] = None

    def is_dual(self, layer: int) -> bool:
        """No layer has DualFFN's audio norms and FFN (what higgs_train.llm.model.Block asks)."""
        return False
