"""Scripted stand-ins for the LLM and the audio codec: generation whose every frame is known in advance.

    engine = scripted_engine(tok_dir, "never_ends")      # an inference Engine over the stand-ins
    engine.model.use("loops")                            # another script from the next request on
    SCRIPTS: normal (2 s of speech, then the end of stream), never_ends (speech that never ends),
             loops (1 s of speech, then a 20-frame span of codes over and over), goes_silent (1 s
             of speech, then frames that decode to silence, no end of stream)

ScriptedLLM answers every step with logits that put all the mass on the scripted code of each
codebook at the stream position the engine samples next (the delay pattern: codebook k holds frame
j - k at position j), so any sampling settings draw exactly the script. ToneCodec decodes a frame
to a tone whose loudness follows its codebook-0 code, and code 0 to digital silence.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import KVCache
from higgs_train.llm.text_tokenizer import load_text_tokenizer
from higgs_train.testing.tiny_exports import TINY_LLM, tiny_text_tokenizer

K, CODES, FPS, HOP = 8, 1024, 25, 960
SILENT = 0                          # the codebook-0 code ToneCodec decodes to silence


def speech(t: int) -> int:
    """A varied, never repeating codebook-0 code for frame t (1..1023: never silent)."""
    return 1 + (t * 7919 + (t * t) % 613) % 1023


def _script(name: str):
    """name -> (codebook-0 code of frame t (1-based), frame count before the end of stream or None)."""
    loop = [speech(1000 + i) for i in range(20)]
    return {
        "normal": (speech, 50),
        "never_ends": (speech, None),
        "loops": (lambda t: speech(t) if t <= 25 else loop[(t - 26) % 20], None),
        "goes_silent": (lambda t: speech(t) if t <= 25 else SILENT, None),
    }[name]


SCRIPTS = ("normal", "never_ends", "loops", "goes_silent")


@dataclass
class _Out:
    audio_logits: torch.Tensor


class ScriptedLLM(nn.Module):
    """The engine's view of a DualFFNModel (config, cache, forward) speaking one script."""

    def __init__(self, vocab_size: int, script: str):
        super().__init__()
        self.cfg = DualFFNConfig(vocab_size=vocab_size, **{**TINY_LLM, "num_layers": 1})
        self.text_embed = nn.Embedding(1, 1)
        self.layers = nn.ModuleList()                 # nothing for inference.packed_gemm to pack:
        self.audio_head = nn.Linear(1, 1, bias=True)  # a linear with a bias is never packed
        self.use(script)
        self.j = 1   # the stream position the logits being returned are for

    def use(self, script: str) -> "ScriptedLLM":
        """Speak `script` from the next prompt on."""
        self.code, self.frames = _script(script)
        return self

    def allocate_cache(self, batch: int, max_len: int) -> KVCache:
        return KVCache(self.cfg, batch, max_len, torch.float32, torch.device("cpu"))

    def forward(self, ids, codes, amask, cache=None, positions=None, token_mask=None, last_only=False,
                attend=None, text_head=True, audio_only=False) -> _Out:
        self.j = self.j + 1 if audio_only else 1      # a prompt (prefill) starts a stream
        B = ids.shape[0]
        logits = torch.zeros(B, 1, K, self.cfg.audio_vocab)
        for k in range(K):
            t = self.j - k
            code = self.cfg.audio_bos if t <= 0 else \
                self.cfg.audio_eos if self.frames is not None and t > self.frames else \
                self.code(t) if k == 0 else (t * 31 + k) % CODES
            logits[:, 0, k, code] = 100.0
        return _Out(logits)


class ToneCodec(nn.Module):
    """The engine's view of an AudioTokenizer: frame -> 40 ms of a 200 Hz tone at 0.1-0.5 amplitude
    (by its codebook-0 code), code SILENT -> zeros. encode gives speech codes (a reference prompt)."""
    n_codebooks, codebook_size, sample_rate, hop, frame_rate = K, CODES, 24000, HOP, FPS

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        cb0 = codes[:, 0].float()                                              # [B, F]
        amp = torch.where(cb0 == SILENT, 0.0, 0.1 + 0.4 * cb0 / CODES)
        t = torch.arange(codes.shape[-1] * HOP) / self.sample_rate
        return (amp.repeat_interleave(HOP, -1) * torch.sin(2 * np.pi * 200 * t))[:, None]

    def encode(self, wav: torch.Tensor, sample_rate: int) -> torch.Tensor:
        n = max(1, wav.shape[-1] * FPS // sample_rate)
        return torch.stack([torch.full((n,), speech(i + 1) % CODES) for i in range(K)])[None]


def text_tokenizer_dir(root) -> Path:
    """A tiny BPE text tokenizer folder (with the release's special tokens), made once per root."""
    d = Path(root) / "text_tokenizer"
    if not (d / "tokenizer.json").exists():
        tiny_text_tokenizer(d)
    return d


def scripted_engine(tok_dir, script: str, **kw):
    from inference.engine import Engine, EngineConfig

    tok = load_text_tokenizer(tok_dir)
    return Engine(ScriptedLLM(len(tok), script), ToneCodec(), tok, kw.pop("cfg", EngineConfig()), **kw)
