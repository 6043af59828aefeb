"""The DualFFN LLM: a Llama-style decoder whose audio positions use their own norms and FFN.

Inputs (one position = one text token or one audio frame):
    input_ids   [B, T] long   text ids; at audio positions the <|AUDIO_OUT|> placeholder (ignored)
    audio_codes [B, T, K] long  K=8 codebook ids in 0..1025 (1024 = stream BOS, 1025 = stream EOS),
                               read only where audio_mask is True
    audio_mask  [B, T] bool   True at audio positions; None = all text
Outputs (DualFFNOutput): hidden [B, T, D], text_logits [B, T, V], audio_logits [B, T, K, 1026].
The logits at position t predict position t+1 (text head: next token; audio head: next frame).

KV cache (what inference uses; no second model implementation):
    cache = model.allocate_cache(batch, max_len, dtype=None, device=None)   # static, preallocated
    # prefill: the prompt fills slots 0..P-1
    out = model(ids, codes, mask, cache=cache, positions=torch.arange(P), last_only=True)
    # one-step decode: write slot P, attend to slots <= P
    out = model(ids[:, None], codes[:, None], mask[:, None], cache=cache, positions=torch.tensor([P]))
  positions [T] are the cache slots written *and* the RoPE positions, shared by every row, so a
  batch of prompts of different lengths is left-padded: pass token_mask [B, T] (False at padding)
  and padded slots are never attended to. RoPE depends only on position differences, so left
  padding does not change the result of a row. Every shape is static (CUDA-graph friendly) except
  the DualFFN split, which gathers audio / text rows when audio_mask is mixed.

Decode fast paths (outputs identical to the plain call; tests/test_inference_speed_paths.py):
    attend=N         attention reads only cache slots 0..N-1 (N >= the highest position + 1); the
                     caller rounds N up to a bucket, so shapes stay static per bucket
    audio_only=True  every position is audio (audio_mask all True, need not be passed): dual
                     layers run only their audio norms and FFN, no split, gather or text embedding
    text_head=False  text_logits is None: the text head (vocab x hidden, the largest matrix) is
                     skipped at steps that cannot emit text

Sizes are a DualFFNConfig (higgs_train/llm/config.py). The model reads and writes no files: a
directory in any layout (ours, the transformers port's, the original release's) is read and
written by higgs_train/llm/checkpoints.py (load_llm, save_llm).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.delay import IGNORE

@dataclass
class DualFFNOutput:
    hidden: Tensor                 # [B, T, D] after the final norm
    text_logits: Tensor | None     # [B, T, V]   (T = 1 with last_only); None with text_head=False
    audio_logits: Tensor           # [B, T, K, codebook_size + 2]


class KVCache:
    """Static per-layer key/value buffers: k, v [L, B, KV, S, hd]; valid [B, S] marks written, real slots."""

    def __init__(self, cfg: DualFFNConfig, batch: int, max_len: int, dtype, device):
        shape = (cfg.num_layers, batch, cfg.num_kv_heads, max_len, cfg.head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        self.valid.zero_()


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        # statistics in float32 whatever the compute dtype (as Llama does)
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_inv_freq(cfg: DualFFNConfig) -> Tensor:
    """Inverse frequencies [hd/2], with Llama-3 long-context scaling when configured."""
    inv = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    s = cfg.rope_scaling
    if not s:
        return inv
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)   # long wavelengths: stretch
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled    # in between: interpolate
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, smoothed, scaled)


def rotate_half(x: Tensor) -> Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class Attention(nn.Module):
    """Grouped-query attention shared by text and audio positions."""

    def __init__(self, cfg: DualFFNConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.nh, self.nkv, self.hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        d = cfg.hidden_size
        self.q_proj = nn.Linear(d, self.nh * self.hd, bias=False)
        self.k_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.v_proj = nn.Linear(d, self.nkv * self.hd, bias=False)
        self.o_proj = nn.Linear(self.nh * self.hd, d, bias=False)

    def heads(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, H, T, hd], k and v [B, KV, T, hd], before RoPE (a family's attention may norm them
        here: higgs_train/families/higgs_tts3/model.py)."""
        B, T, _ = x.shape
        return (self.q_proj(x).view(B, T, self.nh, self.hd).transpose(1, 2),
                self.k_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2),
                self.v_proj(x).view(B, T, self.nkv, self.hd).transpose(1, 2))

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, cache: KVCache | None,
                positions: Tensor | None, mask: Tensor | None, attend: int | None = None) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.heads(x)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        else:
            ck, cv = cache.k[self.layer], cache.v[self.layer]            # [B, KV, S, hd]
            ck.index_copy_(2, positions, k.to(ck.dtype))
            cv.index_copy_(2, positions, v.to(cv.dtype))
            if attend is not None:                 # only the slots that can hold anything
                ck, cv = ck[:, :, :attend], cv[:, :, :attend]
            ck, cv = ck.to(q.dtype), cv.to(q.dtype)
            if T == 1 and self.nh != self.nkv and q.device.type == "cpu":
                # one decode step on CPU: the G query heads of a KV head as G query rows (the same
                # product; the CPU kernel with enable_gqa is 3-5x slower at one query in bf16, ~20 %
                # in fp32, where the engine's greedy frames stay those recorded before this path)
                g = self.nh // self.nkv
                y = F.scaled_dot_product_attention(q.reshape(B, self.nkv, g, self.hd), ck, cv,
                                                   attn_mask=mask).reshape(B, self.nh, 1, self.hd)
            else:
                y = F.scaled_dot_product_attention(q, ck, cv, attn_mask=mask, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.nh * self.hd))


class MLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, cfg: DualFFNConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def split_apply(x: Tensor, audio_mask: Tensor | None, text_fn, audio_fn) -> Tensor:
    """text_fn on text positions, audio_fn on audio positions (each sees only its own rows). A side
    with no rows is not run: bitsandbytes' 4-bit CPU kernel dies (SIGFPE) on a zero-row input, which
    an all-audio prefill slice of a long reference gives the text FFN."""
    out = torch.empty_like(x)
    for rows, fn in ((~audio_mask, text_fn), (audio_mask, audio_fn)):
        if rows.any():
            out[rows] = fn(x[rows])
    return out


class Block(nn.Module):
    """Pre-norm decoder layer; a dual layer gives audio positions their own two norms and FFN."""

    def __init__(self, cfg: DualFFNConfig, layer: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.attn = Attention(cfg, layer)
        self.ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.dual = cfg.is_dual(layer)
        if self.dual:
            self.audio_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.audio_ffn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
            self.audio_mlp = MLP(cfg)

    def forward(self, x, cos, sin, audio_mask, cache, positions, mask, attend=None, audio_only=False):
        if self.dual and audio_only:   # every row audio: what split_apply would give, without the split
            x = x + self.attn(self.audio_attn_norm(x), cos, sin, cache, positions, mask, attend)
            return x + self.audio_mlp(self.audio_ffn_norm(x))
        if self.dual and audio_mask is not None:
            h = split_apply(x, audio_mask, self.attn_norm, self.audio_attn_norm)
            x = x + self.attn(h, cos, sin, cache, positions, mask, attend)
            return x + split_apply(x, audio_mask, lambda t: self.mlp(self.ffn_norm(t)),
                                   lambda t: self.audio_mlp(self.audio_ffn_norm(t)))
        x = x + self.attn(self.attn_norm(x), cos, sin, cache, positions, mask, attend)
        return x + self.mlp(self.ffn_norm(x))


class AudioDecoder(nn.Module):
    """Text and audio embeddings, a stack of `block_class` layers, the text and audio heads: the
    call surface every model family's LLM has (higgs_train/families/__init__.py, AudioLM). A family
    sets block_class (and may extend embed); DualFFNModel below is the Higgs Audio v2 one."""
    block_class: type[nn.Module] = Block

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        K, A, D = cfg.num_codebooks, cfg.audio_vocab, cfg.hidden_size
        self.text_embed = nn.Embedding(cfg.vocab_size, D)
        self.audio_embed = nn.Embedding(K * A, D)          # codebook k uses rows k*A .. k*A+A-1
        self.layers = nn.ModuleList(self.block_class(cfg, i) for i in range(cfg.num_layers))
        self.norm = RMSNorm(D, cfg.rms_norm_eps)
        self.text_head = nn.Linear(D, cfg.vocab_size, bias=False)
        self.audio_head = nn.Linear(D, K * A, bias=False)
        self.register_buffer("inv_freq", rope_inv_freq(cfg), persistent=False)
        self.register_buffer("codebook_offset", torch.arange(K) * A, persistent=False)
        self.gradient_checkpointing = False   # a training choice, set by the LightningModule
        self.apply(self._init)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)

    # ---- forward ---------------------------------------------------------------------------
    def embed(self, input_ids: Tensor, audio_codes: Tensor | None, audio_mask: Tensor | None,
              audio_only: bool = False) -> Tensor:
        if audio_only:
            return self.audio_embed(audio_codes + self.codebook_offset).sum(dim=2)   # [B, T, D]
        x = self.text_embed(input_ids)                                        # [B, T, D]
        if audio_mask is None:
            return x
        codes = audio_codes.masked_fill(~audio_mask[..., None], 0) + self.codebook_offset
        a = self.audio_embed(codes).sum(dim=2)                                # [B, T, K, D] -> [B, T, D]
        return torch.where(audio_mask[..., None], a.to(x.dtype), x)

    def hidden_states(self, input_ids, audio_codes=None, audio_mask=None, cache: KVCache | None = None,
                      positions: Tensor | None = None, token_mask: Tensor | None = None,
                      attend: int | None = None, audio_only: bool = False) -> Tensor:
        B, T = input_ids.shape
        if cache is not None and positions is None:
            raise ValueError("positions are required with a cache")
        if audio_only and audio_codes is None:
            raise ValueError("audio_only needs audio_codes")
        if positions is None:
            positions = torch.arange(T, device=input_ids.device)
        x = self.embed(input_ids, audio_codes, audio_mask, audio_only)
        freqs = positions.float()[:, None] * self.inv_freq[None, :]           # [T, hd/2]
        emb = torch.cat((freqs, freqs), dim=-1)
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)               # [T, hd]
        mask = None
        if cache is not None:
            cache.valid.index_copy_(1, positions, torch.ones(B, T, dtype=torch.bool, device=x.device)
                                    if token_mask is None else token_mask)
            S = cache.max_len if attend is None else attend
            slots = torch.arange(S, device=x.device)
            causal = slots[None, :] <= positions[:, None]                     # [T, S]
            own = slots[None, :] == positions[:, None]    # every query sees itself: no all-masked rows
            mask = ((causal[None] & cache.valid[:, None, :S]) | own[None])[:, None]   # [B, 1, T, S]
        for block in self.layers:
            if self.gradient_checkpointing and self.training and cache is None:
                x = checkpoint(block, x, cos, sin, audio_mask, None, positions, None, use_reentrant=False)
            else:
                x = block(x, cos, sin, audio_mask, cache, positions, mask, attend, audio_only)
        return self.norm(x)

    def forward(self, input_ids: Tensor, audio_codes: Tensor | None = None, audio_mask: Tensor | None = None,
                cache: KVCache | None = None, positions: Tensor | None = None,
                token_mask: Tensor | None = None, last_only: bool = False, attend: int | None = None,
                audio_only: bool = False, text_head: bool = True) -> DualFFNOutput:
        h = self.hidden_states(input_ids, audio_codes, audio_mask, cache, positions, token_mask, attend,
                               audio_only)
        hh = h[:, -1:] if last_only else h
        return DualFFNOutput(hidden=h, text_logits=self.text_head(hh) if text_head else None,
                             audio_logits=self.audio_logits(hh))

    def audio_logits(self, h: Tensor) -> Tensor:
        return self.audio_head(h).unflatten(-1, (self.cfg.num_codebooks, self.cfg.audio_vocab))

    def allocate_cache(self, batch: int, max_len: int, dtype=None, device=None) -> KVCache:
        p = self.text_embed.weight
        return KVCache(self.cfg, batch, max_len, dtype or p.dtype, device or p.device)

    # ---- training loss --------------------------------------------------------------------
    def loss(self, input_ids, audio_codes, audio_mask, audio_labels, text_labels=None,
             text_loss_weight: float = 0.0, codebook_reduction: str = "mean") -> dict:
        """Per-codebook CE at positions with audio labels [B, T, K] (-100 = unsupervised), averaged
        or summed (the transformers port's loss) over codebooks, + text_loss_weight * CE at
        text_labels [B, T]. Labels are already shifted: the label at t is the target of position t's
        prediction. Heads run only where there is a label."""
        if codebook_reduction not in ("sum", "mean"):
            raise ValueError(f"codebook_reduction={codebook_reduction!r}: use sum or mean")
        h = self.hidden_states(input_ids, audio_codes, audio_mask)
        K, A = self.cfg.num_codebooks, self.cfg.audio_vocab
        sel = (audio_labels != IGNORE).any(-1)                                 # [B, T]
        logits = self.audio_logits(h[sel]).float()                             # [N, K, A]
        labels = audio_labels[sel]                                             # [N, K]
        ce = F.cross_entropy(logits.reshape(-1, A), labels.reshape(-1), ignore_index=IGNORE,
                             reduction="none").view(-1, K)
        valid = labels != IGNORE
        per_cb = (ce * valid).sum(0) / valid.sum(0).clamp(min=1)              # [K]
        real = valid & (labels < self.cfg.codebook_size)   # real codes (not stream BOS/EOS)
        correct = (logits.argmax(-1) == labels) & real
        out = {"audio_loss": per_cb.sum() if codebook_reduction == "sum" else per_cb.mean(),
               "codebook_loss": per_cb.detach(),
               "code_acc": correct.sum() / real.sum().clamp(min=1),
               "codebook_acc": correct.sum(0) / real.sum(0).clamp(min=1)}
        loss = out["audio_loss"]
        if text_labels is not None:
            tsel = text_labels != IGNORE
            if tsel.any():
                out["text_loss"] = F.cross_entropy(self.text_head(h[tsel]).float(), text_labels[tsel])
                if text_loss_weight:
                    loss = loss + text_loss_weight * out["text_loss"]
        out["loss"] = loss
        return out

    # ---- parameter groups -----------------------------------------------------------------
    def audio_parameter_names(self) -> list[str]:
        """Parameters that only audio positions use (what `freeze_text` leaves trainable)."""
        return [n for n, _ in self.named_parameters()
                if n.startswith(("audio_embed", "audio_head")) or ".audio_" in n]

    @classmethod
    def build(cls, cfg, device=None) -> "AudioDecoder":
        """A model whose weights are about to be loaded with load_state_dict(..., assign=True):
        parameters on meta (no memory: a full-size fp32 skeleton on a GPU would take 23 GB before
        the bf16 weights replace it), buffers materialised on `device`."""
        with torch.device("meta"):
            model = cls(cfg)
        device = device or "cpu"
        model.inv_freq = rope_inv_freq(cfg).to(device)
        model.codebook_offset = (torch.arange(cfg.num_codebooks) * cfg.audio_vocab).to(device)
        return model


class DualFFNModel(AudioDecoder):
    """Higgs Audio v2's LLM: every layer a Block, dual (audio norms and FFN) where cfg.is_dual says."""


def count_parameters(cfg: DualFFNConfig) -> int:
    """Parameter count of a config, built on the meta device (no memory)."""
    with torch.device("meta"):
        return sum(p.numel() for p in DualFFNModel(cfg).parameters())
