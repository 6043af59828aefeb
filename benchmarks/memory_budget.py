"""Memory budget of the full-size model for inference on one GPU (no weights, no GPU needed).

    python -m benchmarks.memory_budget [prefill_chunk=1024] [budget_gib=16]

Builds model=llm/full and model=tokenizer/full (HuBERT-base teacher) on the meta device and
counts bytes: weights at bf16 and 8-bit (int8 linear weights + one bf16 scale per output row;
embeddings and norms stay bf16), the static KV cache at 4k and 8k slots, and the transient
activations of one prefill slice (the engine prefills `prefill_chunk` positions at a time),
counted with attention scores materialised (the math SDPA path, the worst case). The tokenizer
runs in float32. The check: bf16 weights + tokenizer + KV cache at 8k + prefill + CUDA context
fit in 16 GiB.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from omegaconf import OmegaConf
from torch import nn

from higgs_train.cli import parse
from higgs_train.config import CONFIG_DIR
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import DualFFNModel
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig

GiB = 2 ** 30
CUDA_CONTEXT = 0.75 * GiB   # CUDA context, cuBLAS workspace and allocator slack (measured ~0.5-0.9 GiB)


def llm_bytes(cfg: DualFFNConfig) -> dict:
    with torch.device("meta"):
        m = DualFFNModel(cfg)
    n = sum(p.numel() for p in m.parameters())
    lin = [mod.weight for mod in m.modules() if isinstance(mod, nn.Linear)]
    n_lin = sum(w.numel() for w in lin)
    rows = sum(w.shape[0] for w in lin)
    return {"params": n, "bf16": 2 * n, "int8": n_lin + 2 * rows + 2 * (n - n_lin)}


def tokenizer_bytes() -> dict:
    raw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model/tokenizer/full.yaml"))
    raw["teacher"], raw["teacher_config"] = None, {"model_type": "hubert"}   # HF defaults = HuBERT-base
    with torch.device("meta"):
        m = AudioTokenizer(TokenizerConfig.from_dict(raw))
    n = sum(p.numel() for p in m.parameters())
    return {"params": n, "fp32": 4 * n}


def kv_bytes(cfg: DualFFNConfig, slots: int, batch: int = 1, elem: int = 2) -> int:
    return 2 * cfg.num_layers * batch * cfg.num_kv_heads * slots * cfg.head_dim * elem + batch * slots


def prefill_bytes(cfg: DualFFNConfig, chunk: int, slots: int, elem: int = 2) -> int:
    """Peak transient bytes of one prefill forward of `chunk` positions over `slots` cache slots."""
    D, I, H = cfg.hidden_size, cfg.intermediate_size, cfg.num_heads
    embed = chunk * cfg.num_codebooks * D * elem            # audio embeddings before the sum over codebooks
    hidden = 6 * chunk * D * elem                           # residual, norms, the DualFFN split/scatter
    qkv = chunk * (H + 2 * cfg.num_kv_heads) * cfg.head_dim * elem
    mask = 4 * chunk * slots                                # bool causal/valid/own masks [C, S]
    scores = 2 * H * chunk * slots * 4                      # fp32 scores + softmax (math SDPA path)
    mlp = 3 * chunk * I * elem
    return embed + hidden + qkv + mask + scores + mlp


@dataclass
class Args:
    prefill_chunk: int = field(default=1024, metadata={"help": "prompt positions per prefill forward"})
    budget_gib: float = field(default=16.0, metadata={"help": "the card's memory"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.memory_budget", __doc__)
    chunk = args.prefill_chunk
    budget = args.budget_gib * GiB
    cfg = DualFFNConfig.preset("full")
    llm, tok = llm_bytes(cfg), tokenizer_bytes()
    rows = [("LLM weights bf16", llm["bf16"]), ("LLM weights 8-bit", llm["int8"]),
            ("tokenizer weights fp32", tok["fp32"]),
            ("KV cache 4k slots bf16", kv_bytes(cfg, 4096)), ("KV cache 8k slots bf16", kv_bytes(cfg, 8192)),
            (f"prefill activations ({chunk}-position slice, 8k slots)", prefill_bytes(cfg, chunk, 8192)),
            ("prefill activations (whole 8k prompt at once)", prefill_bytes(cfg, 8192, 8192)),
            ("CUDA context + allocator slack (estimate)", CUDA_CONTEXT)]
    print(f"LLM parameters {llm['params'] / 1e9:.2f} B, tokenizer parameters {tok['params'] / 1e6:.1f} M")
    print(f"{'item':<52} {'GiB':>8}")
    for name, b in rows:
        print(f"{name:<52} {b / GiB:>8.2f}")
    common = tok["fp32"] + kv_bytes(cfg, 8192) + prefill_bytes(cfg, chunk, 8192) + CUDA_CONTEXT
    print("-" * 61)
    ok = True
    for name, w in (("bf16", llm["bf16"]), ("8-bit", llm["int8"])):
        total = w + common
        fits = total <= budget
        ok &= fits or name != "bf16"
        print(f"{'total ' + name + ', 8k positions':<52} {total / GiB:>8.2f}  "
              f"{'fits' if fits else 'does NOT fit'} in {budget / GiB:g} GiB")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main(sys.argv[1:])
