"""The Higgs TTS 3 LLM: a Qwen3 decoder whose audio positions are summed rows of one fused table.

Inputs and outputs are DualFFNModel's (higgs_train/llm/model.py), so the engine's loop, the
Lightning module and the fine-tuning recipe drive either family unchanged:
    input_ids   [B, T] long   text ids; at audio positions anything (the prompts hold -100 there,
                              as the release's audio_token_id; the embedding never reads them)
    audio_codes [B, T, K] long  K=8 codebook ids in 0..1025 (1024 = stream BOS, 1025 = stream EOS),
                               read only where audio_mask is True
    audio_mask  [B, T] bool   True at audio positions; None = all text
Outputs (DualFFNOutput): hidden [B, T, D], text_logits [B, T, V], audio_logits [B, T, K, 1026].
The logits at position t predict position t+1.

What differs from DualFFN:
- every layer is one Qwen3 block shared by text and audio (no audio norms or FFN): pre-norm
  attention with an RMSNorm over each query and key head before RoPE (theta 1e6), grouped-query
  heads, SwiGLU;
- audio in: the table [K * 1026, D]; a frame's embedding is sum_c table[code_c + c * 1026]
  (DualFFN's audio embedding is the same);
- heads tied as the release ties them: audio logits = F.linear(h, table) viewed [.., K, 1026], text
  logits = F.linear(h, text embedding) (tie_audio_embeddings / tie_word_embeddings; an untied
  head has a weight of its own). A tied head's `weight` IS the embedding's Parameter (one tensor,
  one gradient): after a load with assign=True call tie_weights() again.

KV cache, positions, token_mask, attend, last_only, audio_only and text_head mean what they mean
for DualFFNModel (its docstring): both are the house AudioDecoder (hidden_states, forward, loss, the
cache and build), on their own layers. audio_only needs no split here (every layer is shared).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from higgs_train.families.higgs_tts3.config import Tts3Config
from higgs_train.llm.model import Attention, AudioDecoder, Block, RMSNorm


class QKNormAttention(Attention):
    """Grouped-query attention with Qwen3's per-head RMSNorm on queries and keys, before RoPE: the
    house Attention (same projection names, so quantization and LoRA find them, and its cache and
    kernel paths) with the two norms on its heads."""

    def __init__(self, cfg: Tts3Config, layer: int):
        super().__init__(cfg, layer)
        self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        q, k, v = super().heads(x)
        return self.q_norm(q), self.k_norm(k), v


class Qwen3Block(Block):
    """The house's pre-norm layer (higgs_train/llm/model.py: Block) with Qwen3's attention: no layer
    is DualFFN (Tts3Config.is_dual), so text and audio positions go through the same weights."""

    def __init__(self, cfg: Tts3Config, layer: int):
        super().__init__(cfg, layer)
        self.attn = QKNormAttention(cfg, layer)


class HiggsTTS3Model(AudioDecoder):
    """The house audio decoder (higgs_train/llm/model.py: AudioDecoder) on Qwen3 layers, with the
    heads tied to the embeddings as the release ties them."""
    block_class = Qwen3Block

    def __init__(self, cfg: Tts3Config):
        super().__init__(cfg)
        self.tie_weights()

    def tied_names(self) -> dict[str, str]:
        """{head parameter: the embedding parameter it is} under this config's tie flags."""
        tied = {"text_head.weight": "text_embed.weight"} if self.cfg.tie_word_embeddings else {}
        if self.cfg.tie_audio_embeddings:
            tied["audio_head.weight"] = "audio_embed.weight"
        return tied

    def tie_weights(self) -> None:
        """Point each tied head at its embedding's Parameter (again, after load_state_dict(assign=True))."""
        for head, emb in self.tied_names().items():
            self.get_submodule(head.removesuffix(".weight")).weight = self.get_parameter(emb)

    def embed(self, input_ids: Tensor, audio_codes: Tensor | None, audio_mask: Tensor | None,
              audio_only: bool = False) -> Tensor:
        if audio_mask is not None:   # audio positions may hold the -100 placeholder: never looked up
            input_ids = input_ids.masked_fill(audio_mask, 0)
        return super().embed(input_ids, audio_codes, audio_mask, audio_only)


def parameter_shapes(cfg: Tts3Config) -> dict[str, tuple[int, ...]]:
    """Every distinct parameter (a tied head is its embedding) and its shape, built on meta."""
    with torch.device("meta"):
        return {n: tuple(p.shape) for n, p in HiggsTTS3Model(cfg).named_parameters()}


def count_parameters(cfg: Tts3Config) -> int:
    """Parameter count of a config (tied heads counted once), built on the meta device."""
    return sum(math.prod(shape) for shape in parameter_shapes(cfg).values())
