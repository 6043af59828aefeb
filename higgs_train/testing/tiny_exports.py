"""Tiny random exports (LLM + text tokenizer, audio tokenizer) for tests and
benchmarks.

    llm_dir, tok_dir = make_tiny_exports(out_dir)   # out_dir/llm, out_dir/tokenizer
"""
from __future__ import annotations

from pathlib import Path

import torch

from higgs_train.config import model_size
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import DualFFNModel
from higgs_train.llm.text_tokenizer import train_bpe
from higgs_train.testing.synthetic_llm import WORDS
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig
from higgs_train.llm.checkpoints import save_llm

# The one size table: configs/model/*/tiny.yaml (vocab_size comes from the text tokenizer).
TINY_LLM = {k: v for k, v in model_size("llm", "tiny").items() if k != "vocab_size"}
TINY_CODEC = model_size("tokenizer", "tiny")


def tiny_text_tokenizer(out_dir, texts=None, vocab_size: int = 400):
    texts = list(texts or []) + [" ".join(WORDS), "Hello there. How are you today? I am fine, thanks!"]
    return train_bpe(texts * 4, out_dir, vocab_size=vocab_size)


def make_tiny_exports(out_dir, seed: int = 0, llm: dict | None = None, texts=None) -> tuple[Path, Path]:
    out = Path(out_dir)
    torch.manual_seed(seed)
    tok = tiny_text_tokenizer(out / "llm", texts)
    model = DualFFNModel(DualFFNConfig(vocab_size=len(tok), **{**TINY_LLM, **(llm or {})}))
    save_llm(model, out / "llm")
    AudioTokenizer(TokenizerConfig(**TINY_CODEC)).save_pretrained(out / "tokenizer")
    return out / "llm", out / "tokenizer"
