"""Our engine against the transformers port (HiggsAudioV2ForConditionalGeneration.generate) on the
same random weights, in one process on this CPU.

    python -m benchmarks.inference_vs_port [frames=200] [repeats=3] [rows=[fp32-b1-t1,bf16-b4-t2,...]]
    # on a GPU (benchmarks/gpu_check.sh): the release's shape, random weights
    python -m benchmarks.inference_vs_port device=cuda size=release rows=[bf16-b1-t1,bf16-b1-t1-graphs,...]

Model: hidden 512, intermediate 1536, 8 layers, 8 heads / 4 KV heads, head_dim 64, every layer
dual, a 2k BPE vocabulary; the port loads our weights through save_llm(model, dir, "hf", tok_dir).
Both decode greedily from the same prompt (batch b = the prompt b times) and are forced to the same
length: the audio head's stream BOS/EOS rows are zeroed (logit 0 < the best of 1024 random codes),
so neither draws EOS. Per row (dtype, batch, threads): median of `repeats` runs per side, frames/s
of the LLM loop (sampling and delay bookkeeping included, no codec), time to the first complete
frame (prefill + K steps), the 1-minute load average. On a shared machine the wall-clock ratio
moves with the others' load; the CPU-time ratio (process CPU seconds, port / ours) moves less. fp32 rows also count the codes on which the
two agree (equal weights; they may part on a near-tie, then the histories differ).
A row ending in -graphs replays our decode steps from CUDA graphs (inference.decode_graphs; on
CUDA only); without it ours runs eagerly. The port always runs its generate() eagerly.
"matmul floor": the time of one decode step's matrix multiplies alone by F.linear, as the port
runs them (every projection of every layer, the audio FFN of dual layers, the audio head, on a
[batch, 1, hidden] input, in the model's order, median of 20), as frames/s and as the ratio to the
port it would allow: on a CPU those weights stream from memory at every step on both sides, so a
loop on F.linear does not beat that ratio; ours multiplies by packed weights on the CPU
(inference.packed_gemm), which can.
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

import torch

from higgs_train.cli import parse
from higgs_train.llm.delay import revert_delay
from higgs_train.llm.checkpoints import save_llm
from higgs_train.llm.config import DualFFNConfig
from higgs_train.llm.model import DualFFNModel
from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig
from inference.engine import Engine, Reference, Row
from inference.sampling import SamplingConfig
from higgs_train.testing.tiny_exports import TINY_CODEC, tiny_text_tokenizer

SIZE = dict(hidden_size=512, intermediate_size=1536, num_layers=8, num_heads=8, num_kv_heads=4, head_dim=64,
            rope_theta=10000.0, rope_scaling=None)
TEXT = "The quick brown fox jumps over the lazy dog, and then it runs back home before the rain."


def build(tmp: Path, size: str = "small", dtype=torch.float32):
    """(engine, port, prompt ids/codes/amask) on the same weights, on the CPU in `dtype`."""
    from transformers import HiggsAudioV2ForConditionalGeneration

    torch.manual_seed(0)
    tok = tiny_text_tokenizer(tmp / "tok", vocab_size=2048)
    cfg = DualFFNConfig.preset("full", vocab_size=len(tok), **SIZE) if size == "small" else DualFFNConfig.preset("full")  # release shape
    model = DualFFNModel(cfg).eval().to(dtype)
    A = model.cfg.audio_vocab
    with torch.no_grad():   # no stream BOS/EOS drawn: both sides run the full length
        w = model.audio_head.weight.view(model.cfg.num_codebooks, A, -1)
        w[:, model.cfg.codebook_size:] = 0
    engine = Engine(model, AudioTokenizer(TokenizerConfig(**TINY_CODEC)), tok)
    save_llm(model, tmp / "hf", "hf", tokenizer_dir=tmp / "tok")
    port = HiggsAudioV2ForConditionalGeneration.from_pretrained(str(tmp / "hf"), use_text_head=True,
                                                                dtype=dtype).eval()
    ref = Reference("a voice speaks here.", torch.randint(0, 1024, (8, 50), generator=torch.Generator().manual_seed(1)))
    return engine, port, engine.prompts.generation(TEXT, [ref], [], scene="a quiet room")


def ours(engine, prompt, batch, frames, first_only=False):
    """(wall s, CPU s, frames [B][K, F]); first_only: to the first complete frame."""
    ids, codes, amask = prompt
    s = SamplingConfig(temperature=0, max_frames=frames, seed=0)
    rows = [Row(ids, codes, amask, s, torch.Generator().manual_seed(0)) for _ in range(batch)]
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():           # as generate_codes and stream run it
        for out in engine.decode_frames(rows):
            if first_only and out[0].shape[1]:
                break
    return time.perf_counter() - t0, time.process_time() - c0, out


def matmul_floor(model, batch: int, steps: int = 20) -> float:
    """Seconds of one audio-only decode step's matrix multiplies alone (see the module doc)."""
    p = model.text_embed.weight
    x = torch.randn(batch, 1, model.cfg.hidden_size, dtype=p.dtype, device=p.device)
    mats = []
    for block in model.layers:
        a, mlp = block.attn, block.audio_mlp if block.dual else block.mlp
        mats += [(a.q_proj, x), (a.k_proj, x), (a.v_proj, x), (a.o_proj, torch.randn_like(a.q_proj(x))),
                 (mlp.gate_proj, x), (mlp.up_proj, x), (mlp.down_proj, torch.randn_like(mlp.up_proj(x)))]
    mats.append((model.audio_head, x))
    times = []
    with torch.no_grad():
        for _ in range(steps + 2):
            if p.device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for lin, inp in mats:
                lin(inp)
            if p.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def port_run(port, prompt, batch, frames, K=8):
    """(wall s, CPU s, frames [B][K, F]); frames=1: to the first complete frame."""
    ids, codes, amask = prompt
    P = len(ids) - 1                             # the port's prompt ends with <|audio_out_bos|>
    am = amask[:P]
    n = int(am.sum())
    dev = port.device
    a_ids = codes[None, :P][:, am].expand(batch, -1, -1).to(dev)
    t0, c0 = time.perf_counter(), time.process_time()
    with torch.no_grad():
        out = port.generate(input_ids=ids[None, :P].expand(batch, -1).to(dev), audio_input_ids=a_ids,
                            audio_input_ids_mask=torch.ones(batch, n, dtype=torch.bool, device=dev),
                            attention_mask=torch.ones(batch, P, dtype=torch.long, device=dev),
                            do_sample=False, max_new_tokens=1 + frames + K - 1)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    dt, dc = time.perf_counter() - t0, time.process_time() - c0
    out = out.cpu()
    return dt, dc, [revert_delay(out[b, n:].T)[:, 1:] for b in range(batch)]


@dataclass
class Args:
    frames: int = field(default=200, metadata={"help": "frames each side generates (forced)"})
    repeats: int = field(default=3, metadata={"help": "runs per side; the median is reported"})
    rows: List[str] = field(default_factory=list, metadata={
        "help": "DTYPE-bB-tT[-graphs] rows, e.g. [fp32-b1-t1,bf16-b4-t2] (empty: fp32/bf16 x batch 1/4 x threads 1/2)"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    size: str = field(default="small", metadata={"help": "small | release (the release's shape, built in bf16)"})


def main(argv: list[str]) -> None:
    a = parse(Args, argv, "python -m benchmarks.inference_vs_port", __doc__)
    rows = [(d, b, t, False) for d in ("fp32", "bf16") for b in (1, 4) for t in (1, 2)]
    if a.rows:
        rows = [(d, int(b[1:]), int(t[1:]), g == ["graphs"]) for d, b, t, *g in (r.split("-") for r in a.rows)]
    tmp = tempfile.TemporaryDirectory()
    # the release shape is built in bf16 (14.6 GB in fp32)
    engine, port, prompt = build(Path(tmp.name), a.size, torch.float32 if a.size == "small" else torch.bfloat16)
    engine.model.to(a.device)
    engine.device = torch.device(a.device)
    port.to(a.device)
    print(f"prompt {len(prompt[0])} positions, {a.frames} frames forced, median of {a.repeats}; "
          f"{sum(p.numel() for p in engine.model.parameters()) / 1e6:.1f} M parameters")
    print("| dtype, batch, threads | ours frames/s | port frames/s | ours / port | ours / port (CPU time) "
          "| first frame ours / port ms | matmul floor frames/s (ours / port at most) "
          "| fp32 codes equal | load avg |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for dname, batch, threads, graphs in rows:
        torch.set_num_threads(threads)
        dtype = torch.float32 if dname == "fp32" else torch.bfloat16
        engine.model.to(dtype)
        engine.cfg.cuda_graphs = graphs
        engine.caches.clear()
        port.to(dtype)
        ours(engine, prompt, batch, 4)           # warm-up (cache allocation, first-call costs)
        port_run(port, prompt, batch, 4)
        t_ours, t_port, c_ours, c_port = [], [], [], []
        for _ in range(a.repeats):        # interleaved, so a change in the machine's load hits both
            dt, dc, f_ours = ours(engine, prompt, batch, a.frames)
            t_ours.append(dt)
            c_ours.append(dc)
            dt, dc, f_port = port_run(port, prompt, batch, a.frames)
            t_port.append(dt)
            c_port.append(dc)
        first_o = statistics.median(ours(engine, prompt, batch, a.frames, first_only=True)[0]
                                    for _ in range(a.repeats))
        first_p = statistics.median(port_run(port, prompt, batch, 1)[0] for _ in range(a.repeats))
        fo, fp = batch * a.frames / statistics.median(t_ours), batch * a.frames / statistics.median(t_port)
        same = "-"
        if dname == "fp32":
            o, p = f_ours[0][:, :a.frames], f_port[0][:, :a.frames]
            if o.shape == p.shape:
                d = (o != p).any(0).nonzero()
                same = (f"{(o == p).float().mean().item() * 100:.1f} %, "
                        + (f"frames 1-{int(d[0])} equal" if len(d) else "all frames equal"))
                # seen: the last 5-6 of F frames differ for F = 12, 40, 200 (identical weights and
                # history until there): how the port ends the delay pattern at max_new_tokens
            else:
                same = f"shapes {tuple(o.shape)} vs {tuple(p.shape)}"
        cpu = statistics.median(c_port) / statistics.median(c_ours)
        floor = batch / matmul_floor(engine.model, batch)
        name = f"{dname} b{batch} t{threads}" + (" graphs" if graphs else "")
        print(f"| {name} | {fo:.1f} | {fp:.1f} | {fo / fp:.2f} | {cpu:.2f} | "
              f"{first_o * 1000:.0f} / {first_p * 1000:.0f} | {floor:.1f} ({floor / fp:.2f}) | {same} | "
              f"{os.getloadavg()[0]:.2f} |", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
