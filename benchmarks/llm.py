"""LLM benchmarks: CPU training and decoding speed (tiny), batcher padding, full-size memory table.

    python -m benchmarks.llm [steps=10] [threads=N]
"""
from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

from higgs_train.cli import parse
from higgs_train.llm import DualFFNConfig, DualFFNModel
from higgs_train.llm.data import LLMStream
from higgs_train.llm.model import count_parameters
from higgs_train.llm.text_tokenizer import train_bpe
from omegaconf import OmegaConf

from higgs_train.config import CONFIG_DIR

from higgs_train.testing.synthetic_llm import write_synthetic_shards

GIB = 1024 ** 3


def tiny_config(vocab: int) -> DualFFNConfig:
    raw = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "model/llm/tiny.yaml"))
    raw["vocab_size"] = vocab
    return DualFFNConfig.from_dict(raw)


def train_speed(stream: LLMStream, cfg: DualFFNConfig, steps: int) -> tuple[float, float]:
    """(tokens/s, padding fraction) of AdamW training steps on real batches (data time excluded)."""
    torch.manual_seed(0)
    model = DualFFNModel(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    it = iter(stream)
    tokens = positions = 0
    elapsed = 0.0
    for i in range(steps + 1):
        b = next(it)
        t = time.perf_counter()
        loss = model.loss(b["input_ids"], b["audio_codes"], b["audio_mask"], b["audio_labels"])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:   # step 0 warms up allocator and kernels
            elapsed += time.perf_counter() - t
            tokens += b["num_tokens"].item()
            positions += b["num_positions"].item()
    return tokens / elapsed, 1 - tokens / positions


@torch.no_grad()
def decode_speed(cfg: DualFFNConfig, batch: int, prompt: int, frames: int) -> float:
    """Audio frames/s of one-step decoding with the static KV cache (greedy, no sampling cost)."""
    model = DualFFNModel(cfg).eval()
    cache = model.allocate_cache(batch, prompt + frames)
    ids = torch.randint(0, cfg.vocab_size, (batch, prompt))
    model(ids, cache=cache, positions=torch.arange(prompt), last_only=True)
    codes = torch.full((batch, 1, cfg.num_codebooks), cfg.audio_bos)
    mask = torch.ones(batch, 1, dtype=torch.bool)
    t = time.perf_counter()
    for i in range(frames):
        out = model(ids[:, :1], codes, mask, cache=cache, positions=torch.tensor([prompt + i]))
        codes = out.audio_logits.argmax(-1)
    return batch * frames / (time.perf_counter() - t)


def memory_table(cfg: DualFFNConfig) -> list[tuple]:
    """Per-GPU GiB of bf16 weights, bf16 grads, fp32 Adam (master + m + v) under ZeRO-2/3.
    ZeRO-2 shards grads and optimizer states; ZeRO-3 also the weights. Activations excluded."""
    with torch.device("meta"):
        m = DualFFNModel(cfg)
    total = sum(p.numel() for p in m.parameters())
    audio = set(m.audio_parameter_names())
    audio_only = sum(p.numel() for n, p in m.named_parameters() if n in audio)
    rows = []
    for label, trainable in (("full", total), ("freeze_text", audio_only)):
        for stage in (2, 3):
            for gpus in (1, 8, 64):
                w = 2 * total / (gpus if stage == 3 else 1)
                g = 2 * trainable / gpus
                adam = 12 * trainable / gpus
                rows.append((label, f"ZeRO-{stage}", gpus, w / GIB, g / GIB, adam / GIB, (w + g + adam) / GIB))
    return rows


@dataclass
class Args:
    steps: int = field(default=10, metadata={"help": "training steps timed per max_tokens"})
    threads: Optional[int] = field(default=None, metadata={"help": "torch threads (null: torch's default)"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.llm", __doc__)
    steps = args.steps
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    with tempfile.TemporaryDirectory() as d:
        # lengths like real speech: 4-30 words -> ~1-8 s -> 25-200 frames per segment
        rows = write_synthetic_shards(f"{d}/shards", n_sources=24, segments_per_source=12, words=(4, 30))
        tok = train_bpe([r["text"] for r in rows], f"{d}/tok", vocab_size=1000)
        cfg = tiny_config(64 * -(-len(tok) // 64))
        print(f"\ntiny config: {count_parameters(cfg) / 1e6:.2f} M parameters")
        print("\n| max_tokens | tokens/s (train) | padding |\n|---|---|---|")
        for max_tokens in (2048, 8192):
            stream = LLMStream(f"{d}/shards", tok, kinds={"tts": 0.6, "clone": 0.25, "dialogue": 0.15},
                               max_tokens=max_tokens, max_len=2048, buffer=512, max_group=64,
                               max_dialogue_turns=4, seed=0)
            tps, pad = train_speed(stream, cfg, steps)
            print(f"| {max_tokens} | {tps:.0f} | {pad:.3f} |")
        print("\n| buffer | padding (batcher only, 200 batches, max_tokens 8192) |\n|---|---|")
        for buffer in (64, 512):
            stream = LLMStream(f"{d}/shards", tok, kinds={"tts": 0.6, "clone": 0.25, "dialogue": 0.15},
                               max_tokens=8192, max_len=2048, buffer=buffer, max_group=64,
                               max_dialogue_turns=4, seed=0)
            it = iter(stream)
            bs = [next(it) for _ in range(200)]
            real = sum(b["num_tokens"].item() for b in bs)
            print(f"| {buffer} | {1 - real / sum(b['num_positions'].item() for b in bs):.3f} |")
        print("\n| batch | decode frames/s (tiny, KV cache, prompt 256) |\n|---|---|")
        for batch in (1, 8):
            print(f"| {batch} | {decode_speed(cfg, batch, 256, 64):.0f} |")

    full = DualFFNConfig.preset("full")
    print(f"\nfull config: {count_parameters(full) / 1e9:.3f} B parameters ({asdict(full)['num_layers']} dual layers)")
    print("\n| trained | ZeRO | GPUs | weights GiB | grads GiB | Adam GiB | total GiB/GPU |\n|---|---|---|---|---|---|---|")
    for r in memory_table(full):
        print(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.1f} | {r[4]:.1f} | {r[5]:.1f} | {r[6]:.1f} |")
    print("(bf16 weights and grads, fp32 master + Adam m, v; activations excluded)")


if __name__ == "__main__":
    main(sys.argv[1:])
