"""How far int8 and NF4 weights (higgs_train.llm.quantize) move the LLM from bf16, over the first 100
frames of a greedy generation.

    python -m benchmarks.quantize_quality                                   # the tiny release fixture
    python -m benchmarks.quantize_quality llm=demo_out/runs/llm/export      # the demo's trained LLM

Per quantize mode, against the same model in bf16 (quantize=none), both on the CPU in bf16:
- teacher-forced: the prompt + bf16's greedy stream fed to both; relative error of the audio logits
  (||q - ref|| / ||ref|| over the decode positions) and the share of (frame, codebook) codes whose
  argmax equals bf16's;
- free-running: each model decodes greedily by itself (the engine, KV cache, packed GEMMs where they
  apply); the share of codes and of whole frames equal to bf16's, and the first frame that differs.
The audio head's stream BOS/EOS rows are zeroed so every model speaks the full `frames` (as
benchmarks/inference_vs_port.py forces its length). A directory with a text tokenizer is prompted
with `text` in the release's chat format (the engine's prompt); one without (the release fixture)
with random ids and a random reference of `prompt` positions.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import torch

from higgs_train.cli import parse
from higgs_train.llm.checkpoints import load_llm
from higgs_train.llm.delay import apply_delay
from higgs_train.llm.model import DualFFNModel

FIXTURE = Path(__file__).resolve().parents[1] / "tests/fixtures/release/llm_original/model"


class NoCodec:
    """What the engine reads of an audio tokenizer to make codes (no audio is decoded here)."""

    def __init__(self, K: int, size: int):
        self.n_codebooks, self.codebook_size, self.sample_rate = K, size, 24000

    def eval(self):
        return self


def load(llm: Path, mode: str) -> DualFFNModel:
    m = load_llm(llm, dtype=torch.bfloat16, quantize=mode)[0].eval()
    K, A = m.cfg.num_codebooks, m.cfg.audio_vocab
    with torch.no_grad():
        for k in range(K):
            m.audio_head.weight[k * A + m.cfg.audio_bos:(k + 1) * A] = 0
    return m


def engine_for(model: DualFFNModel, llm: Path, work: Path):
    from higgs_train.llm.text_tokenizer import load_text_tokenizer
    from inference.engine import Engine, EngineConfig
    from higgs_train.testing.tiny_exports import tiny_text_tokenizer

    if (llm / "tokenizer.json").is_file():
        tok = load_text_tokenizer(llm)
    else:
        tok = tiny_text_tokenizer(work / "text_tokenizer")
        model.cfg.special_tokens = None
    return Engine(model, NoCodec(model.cfg.num_codebooks, model.cfg.codebook_size), tok,
                  EngineConfig(buckets=(1024, 4096)))


def row(engine, args):
    from inference.engine import Request, Row
    from inference.sampling import SamplingConfig

    s = SamplingConfig(temperature=0, max_frames=args.frames, seed=0)
    if (Path(args.llm) / "tokenizer.json").is_file():
        req = Request(args.text, sampling=s)
        return engine.row(req, engine.plan(req))
    K, P = engine.K, args.prompt
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, engine.model.cfg.vocab_size, (P,), generator=g)
    amask = torch.arange(P) >= P // 4
    codes = torch.randint(0, engine.model.cfg.codebook_size, (P, K), generator=g)
    codes[-1] = engine.bos
    return Row(ids, codes, amask, s, torch.Generator().manual_seed(0))


@torch.no_grad()
def teacher_forced(model: DualFFNModel, r, frames: torch.Tensor):
    """Audio logits predicting stream positions 1..F+K-1 with bf16's stream fed: [F+K-1, K, A], and
    the mask of (position, codebook) entries that hold a real frame."""
    K, F = frames.shape
    bos, eos = model.cfg.audio_bos, model.cfg.audio_eos
    stream = apply_delay(torch.cat([frames.new_full((K, 1), bos), frames], 1), bos, eos)   # [K, F + K]
    feed = stream[:, 1:-1].t()                                             # positions 1..F+K-2 as inputs
    ids = torch.cat([r.ids, torch.full((len(feed),), int(r.ids[-1]))])[None]
    codes = torch.cat([r.codes, feed])[None]
    amask = torch.cat([r.amask, torch.ones(len(feed), dtype=torch.bool)])[None]
    P = len(r.ids)
    logits = model(ids, codes, amask, text_head=False).audio_logits[0, P - 1:].float()   # [F+K-1, K, A]
    j = torch.arange(1, F + K)[:, None]
    valid = (j - torch.arange(K)[None] >= 1) & (j - torch.arange(K)[None] <= F)
    return logits, stream[:, 1:].t(), valid


@dataclass
class Args:
    llm: str = field(default=str(FIXTURE), metadata={"help": "an LLM directory in any layout"})
    text: str = field(default="Hello there. How are you today?", metadata={"help": "spoken (with a text tokenizer)"})
    prompt: int = field(default=64, metadata={"help": "random prompt positions (no text tokenizer)"})
    frames: int = field(default=100, metadata={"help": "frames compared"})
    modes: List[str] = field(default_factory=lambda: ["int8", "nf4"], metadata={"help": "quantize modes against bf16"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.quantize_quality", __doc__)
    torch.manual_seed(0)
    import tempfile

    llm = Path(args.llm)
    with tempfile.TemporaryDirectory(prefix="quantize_quality_") as work:
        compare(llm, Path(work), args)


def compare(llm: Path, work: Path, args) -> None:
    ref_model = load(llm, "none")
    ref_engine = engine_for(ref_model, llm, work)
    r = row(ref_engine, args)
    ref = ref_engine.generate_codes([r])[0][:, :args.frames]
    ref_logits, targets, valid = teacher_forced(ref_model, r, ref)
    print(f"{llm}: {ref_model.cfg.num_layers} layers, hidden {ref_model.cfg.hidden_size}; prompt {len(r.ids)} "
          f"positions; bf16 greedy: {ref.shape[1]} frames x {ref.shape[0]} codebooks\n")
    print("| quantize | audio logits rel. error (teacher-forced) | argmax = bf16 (teacher-forced) "
          "| codes = bf16 (free-running) | frames = bf16 (free-running) | first differing frame |\n"
          "| --- | --- | --- | --- | --- | --- |")
    for mode in args.modes:
        m = load(llm, mode)
        logits, _, _ = teacher_forced(m, r, ref)
        rel = ((logits - ref_logits)[valid].norm() / ref_logits[valid].norm()).item()
        agree = (logits.argmax(-1) == ref_logits.argmax(-1))[valid].float().mean().item()
        got = engine_for(m, llm, work).generate_codes([r])[0][:, :args.frames]
        n = min(got.shape[1], ref.shape[1])
        same = got[:, :n] == ref[:, :n]
        whole = same.all(0)
        first = int((~whole).nonzero()[0]) if (~whole).any() else None
        print(f"| {mode} | {rel:.4f} | {agree:.1%} | {same.float().mean().item():.1%} | {whole.float().mean().item():.1%} "
              f"| {first if first is not None else 'none'} |")


if __name__ == "__main__":
    main(sys.argv[1:])
