"""Peak memory of the released model's shape (5.8 B parameters), bf16 / int8 / nf4, measured per case
in a fresh process: inference (an 8k-position prompt prefilled + 100 frames decoded, the full-size
audio tokenizer loaded, the frames decoded to audio) and one LoRA training step (configs/recipes/finetune.yaml's
targets and rank, activation checkpointing, batch 1) at several sequence lengths.

    python -m benchmarks.release_memory                        # CPU: 2 and 4 layers, fit, full loads if RAM allows
    python -m benchmarks.release_memory device=cuda layers=[28] full=skip    # a GPU (benchmarks/gpu_check.sh)

Why layers: every case uses the release's exact shapes (hidden 3072, FFN 8192, 24/8 heads, vocab
128,256, 8 x 1026 codes, every layer dual) but only L of the 28 decoder layers. Weights, KV cache and
the checkpointed activations are each a sum over layers, so peak(L) = a + b * L: two layer counts fit
it and give the 28-layer figure (said "extrapolated"). On a 2-core CPU an 8k prefill of 28 layers
takes tens of minutes per case; 2 and 4 layers take one. `full=auto` then loads the real 28-layer
checkpoint once per quantize mode with a short prompt (when more than 15 GB are free) to check the
fit's weight term against a measurement.

On the CPU, peak RSS (VmHWM, from the end of loading: loading's own peak is reported apart, as
load_peak) stands in for GPU memory; every weight is copied out of the mapped files first (resident()). The GPU column of the table is
peak RSS - the RSS of the same process before loading anything (Python, torch, bitsandbytes) + a CUDA
context allowance (CUDA_CONTEXT_GIB: context, cuBLAS workspace and allocator slack, what an idle
PyTorch process holds on a recent card). On CUDA the script reports torch.cuda.max_memory_allocated
and max_memory_reserved instead, plus tokens/s and the real-time factor.

The random checkpoints (original layout, bf16, shards of 4.6 GB: benchmarks/gpu_release.py's
writer, the converter's export plan) are written under `dir` (default: a temp dir) and deleted after
unless keep=true. The audio head's stream BOS/EOS rows are zeroed after loading so greedy decoding
runs the full 100 frames (as benchmarks/inference_vs_port.py forces its length).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from higgs_train.cli import parse

GIB = 2 ** 30
CUDA_CONTEXT_GIB = 0.75    # benchmarks/memory_budget.py's estimate
FULL_LAYERS = 28
MODES = ("none", "int8", "nf4")


def rss_gib() -> float:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1]) * 1024 / GIB


def peak_rss_gib() -> float:
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM")).split()[1]) * 1024 / GIB


def reset_peak() -> None:
    """Start VmHWM again from the current RSS (Linux: clear_refs 5). After loading: loading's own
    transient (a mapped tensor and its copy, a CPU artifact) is reported apart as load_peak."""
    Path("/proc/self/clear_refs").write_text("5")


def resident(module: torch.nn.Module) -> None:
    """Copy every float tensor of `module` into the process' own memory. safetensors hands out
    tensors backed by the mapped file, paged in only where touched (a decode step never touches
    the text head): RSS would then miss weights that a GPU holds whole. Quantized tensors are new
    memory already."""
    from higgs_train.llm.quantize import is_quantized

    for m in module.modules():
        if is_quantized(m):
            continue
        for t in [*m._parameters.values(), *m._buffers.values()]:
            if t is not None and t.device.type == "cpu" and t.is_floating_point():
                t.data = t.data.clone()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


# ------------------------------------------------------------------------- one case (fresh process)

def case_infer(c: dict, device: torch.device) -> dict:
    from higgs_train.llm.checkpoints import load_llm
    from higgs_train.tokenizer import AudioTokenizer
    from inference.engine import Engine, EngineConfig, Row
    from inference.sampling import SamplingConfig
    from higgs_train.testing.tiny_exports import tiny_text_tokenizer

    out = {}
    t0 = time.perf_counter()
    model = load_llm(c["llm"], dtype=torch.bfloat16, device=device, quantize=c["quantize"])[0]
    sync(device)
    resident(model)
    out["load_s"] = time.perf_counter() - t0
    out["rss_llm_gib"] = rss_gib()
    codec = AudioTokenizer.from_pretrained(c["codec"], device=device)
    resident(codec)
    out["rss_loaded_gib"], out["load_peak_rss_gib"] = rss_gib(), peak_rss_gib()
    reset_peak()
    if device.type == "cuda":
        out["cuda_loaded_gib"] = torch.cuda.memory_allocated() / GIB
    K, A = model.cfg.num_codebooks, model.cfg.audio_vocab
    with torch.no_grad():   # no stream BOS/EOS drawn: every case decodes the same number of frames
        for k in range(K):
            model.audio_head.weight[k * A + model.cfg.audio_bos:k * A + A] = 0
    model.cfg.special_tokens = None    # the prompt below is made of ids, not text
    tok = tiny_text_tokenizer(Path(c["work"]) / "text_tokenizer")
    # no packed decode weights: a CPU-only copy of them (inference.packed_gemm; +0.19 GiB a layer in
    # bf16) that a GPU never makes
    engine = Engine(model, codec, tok, EngineConfig(buckets=(c["bucket"],), packed_gemm=False))
    frames, P = c["frames"], c["bucket"] - c["frames"] - K - 1     # the prompt fills the bucket
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128000, (P,), generator=g)
    amask = torch.arange(P) >= min(200, P // 4)                      # a text prefix, then reference audio
    codes = torch.randint(0, model.cfg.codebook_size, (P, K), generator=g)
    codes[-1] = model.cfg.audio_bos
    sampling = SamplingConfig(temperature=0, max_frames=frames, seed=0)
    row = Row(ids, codes, amask, sampling, torch.Generator().manual_seed(0))
    marks = []
    sync(device)
    t0 = time.perf_counter()
    got = engine.generate_codes([row], progress=lambda n: (sync(device), marks.append(time.perf_counter())))[0]
    t_codes = time.perf_counter() - t0
    audio = engine.decode(got)
    sync(device)
    t_all = time.perf_counter() - t0
    out.update(packed=False, prompt=P, frames=int(got.shape[1]), prefill_s=marks[0] - t0,
               decode_frames_per_s=(len(marks) - 1) / max(marks[-1] - marks[0], 1e-9),
               codes_s=t_codes, rtf=t_all / (len(audio) / engine.sample_rate))
    return out


def case_train(c: dict, device: torch.device) -> dict:
    from omegaconf import OmegaConf

    from higgs_train.config import package_configs
    from higgs_train.finetune.lora import FinetuneModule
    from higgs_train.llm.layouts import read_config
    from higgs_train.llm.delay import IGNORE

    lora = OmegaConf.to_container(OmegaConf.load(package_configs("recipes") / "recipes/finetune.yaml").lora)
    cfg = read_config(c["llm"])[0]
    t0 = time.perf_counter()
    module = FinetuneModule(asdict(cfg), tokenizer_dir=c["llm"], optim={}, init_from=c["llm"],
                            gradient_checkpointing=True, lora=lora, quantize=c["quantize"]).to(device)
    resident(module)
    out = {"load_s": time.perf_counter() - t0, "rss_loaded_gib": rss_gib(), "load_peak_rss_gib": peak_rss_gib()}
    reset_peak()
    if device.type == "cuda":
        out["cuda_loaded_gib"] = torch.cuda.memory_allocated() / GIB
    params = [p for p in module.parameters() if p.requires_grad]
    out["trainable"] = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4)
    T, K = c["seq"], cfg.num_codebooks
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 128000, (1, T), generator=g)
    mask = torch.arange(T)[None] >= T // 10                      # a text prompt, then the audio turn
    codes = torch.randint(0, cfg.codebook_size, (1, T, K), generator=g)
    labels = torch.full((1, T, K), IGNORE)
    labels[mask] = torch.roll(codes, -1, 1)[mask]
    text_labels = torch.full((1, T), IGNORE)
    text_labels[0, T // 10 - 1] = 17                             # the turn's few supervised text tokens
    text_labels[0, -1] = 18
    batch = [t.to(device) for t in (ids, codes, mask, labels, text_labels)]
    module.train()
    sync(device)
    t0 = time.perf_counter()
    loss = module.model.loss(*batch, codebook_reduction="mean")["loss"]
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    out.update(step_s=time.perf_counter() - t0, tokens_per_s=T / (time.perf_counter() - t0), loss=loss.item())
    return out


def run_case(c: dict) -> dict:
    device = torch.device(c["device"])
    torch.set_num_threads(c["threads"]) if c["threads"] else None
    try:   # its import is part of every case's baseline (a GPU image without it runs quantize=none only)
        import bitsandbytes  # noqa: F401
    except ImportError:
        pass

    base = rss_gib()
    if device.type == "cuda":
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    out = {"rss_base_gib": base, **(case_infer(c, device) if c["kind"] == "infer" else case_train(c, device))}
    out["peak_rss_gib"] = peak_rss_gib()
    if device.type == "cuda":
        out["cuda_max_allocated_gib"] = torch.cuda.max_memory_allocated() / GIB
        out["cuda_max_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
    return out


# ------------------------------------------------------------------------------- the driver

def write_checkpoints(root: Path, layers: int, device: str) -> tuple[Path, Path]:
    """A release-shaped random LLM of `layers` decoder layers (original layout, bf16) and a full-size
    random audio tokenizer (the release's topology, a random HuBERT-base), each written once."""
    from benchmarks.gpu_release import write_release

    from higgs_train.config import model_size
    from higgs_train.llm.config import DualFFNConfig
    from higgs_train.tokenizer import AudioTokenizer, TokenizerConfig

    llm, codec = root / f"llm_{layers}", root / "codec"
    if not (llm / "config.json").is_file():
        cfg = replace(DualFFNConfig(num_layers=layers), encode_audio_in_tokens=True)
        gb = write_release(llm, cfg, torch.device(device))
        print(f"wrote {llm}: {gb:.2f} GB", flush=True)
    if not (codec / "config.json").is_file():
        size = {**model_size("tokenizer", "full"), "teacher": None, "teacher_config": {"model_type": "hubert"}}
        torch.manual_seed(0)
        AudioTokenizer(TokenizerConfig(**size)).save_pretrained(codec)
    return llm, codec


def fresh_process(c: dict) -> dict:
    """One case in a new interpreter; its JSON result (or the error's last line)."""
    # glibc keeps freed heap memory of the size of activations (its mmap threshold grows with the
    # tensors freed), so RSS would count memory no longer in use: a fixed threshold maps and unmaps
    # every large tensor, and RSS follows the live tensors as a GPU allocator's count does
    # (a 4-layer LoRA step at 2048: 5.04 GiB peak with glibc's default, 4.27 with this)
    p = subprocess.run([sys.executable, "-m", "benchmarks.release_memory", f"case={json.dumps(c)}"],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True,
                       env={**os.environ, "PYTHONUNBUFFERED": "1", "MALLOC_MMAP_THRESHOLD_": "131072"})
    if p.returncode:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1], "rc": p.returncode}
    return json.loads(p.stdout.strip().splitlines()[-1])


def gpu_estimate(r: dict) -> float:
    return r["peak_rss_gib"] - r["rss_base_gib"] + CUDA_CONTEXT_GIB


def fit(xs: list[int], ys: list[float], at: int) -> tuple[float, float, float]:
    """(intercept, slope, value at `at`) of the straight line through the points (least squares)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - b * mx, b, my - b * mx + b * at


@dataclass
class Args:
    case: Optional[Dict[str, Any]] = field(default=None, metadata={
        "help": "run one case (a JSON object) in this process: what the driver does per case"})
    device: str = field(default="cpu", metadata={"help": "torch device"})
    layers: List[int] = field(default_factory=lambda: [2, 4], metadata={
        "help": "decoder-layer counts measured (the fit needs two)"})
    modes: List[str] = field(default_factory=lambda: list(MODES), metadata={"help": "quantize modes"})
    seqs: List[int] = field(default_factory=lambda: [512, 2048], metadata={"help": "LoRA step sequence lengths"})
    bucket: int = field(default=8192, metadata={"help": "KV-cache bucket the prompt + 100 frames fill"})
    frames: int = field(default=100, metadata={"help": "frames decoded after the prefill"})
    full: str = field(default="auto", metadata={
        "help": "auto | load | skip | only: also load the real 28-layer checkpoint per mode (short prompt); "
                "auto: if > 15 GB free; only: just that"})
    resume: List[str] = field(default_factory=list, metadata={
        "help": "JSON files of earlier runs (json=): their cases are reported, not run again"})
    threads: int = field(default=0, metadata={"help": "torch threads per case (0: torch's default)"})
    dir: Optional[str] = field(default=None, metadata={"help": "checkpoints go here (null: a temp dir)"})
    keep: bool = field(default=False, metadata={"help": "keep the checkpoints"})
    json: Optional[str] = field(default=None, metadata={"help": "write every result here too"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.release_memory", __doc__)
    if args.full not in ("auto", "load", "skip", "only"):
        raise SystemExit(f"error: full={args.full}: auto | load | skip | only")
    if args.case:
        print(json.dumps(run_case(args.case)))
        return

    import psutil

    layers, modes, seqs = args.layers, args.modes, args.seqs
    root = Path(args.dir or tempfile.mkdtemp(prefix="release_memory_"))
    results = [r for f in args.resume for r in json.loads(Path(f).read_text()) if "error" not in r]

    def key(r):
        return (r["kind"], r["layers"], r["quantize"], r.get("seq"), r["bucket"], r["frames"],
                r.get("packed", True) if r["kind"] == "infer" else None, r.get("malloc"))

    def run(kind, layers_, mode, **kw):
        c = {"kind": kind, "layers": layers_, "quantize": mode, "device": args.device, "threads": args.threads,
             "bucket": args.bucket, "frames": args.frames, "packed": False, "malloc": "mmap_threshold", **kw}
        done = [r for r in results if key(r) == key(c)]
        if done:
            return done[0]
        llm, codec = write_checkpoints(root, layers_, args.device)
        c.update(llm=str(llm), codec=str(codec), work=str(root))
        t0 = time.perf_counter()
        r = {**c, **fresh_process(c), "wall_s": time.perf_counter() - t0}
        results.append(r)
        print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()
                          if k not in ("llm", "codec", "work")}), flush=True)
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1))
        return r

    try:
        for L in layers if args.full != "only" else []:
            for mode in modes:
                run("infer", L, mode)
                for s in seqs:
                    run("train", L, mode, seq=s)
            if not args.keep:
                shutil.rmtree(root / f"llm_{L}", ignore_errors=True)
        full = args.full in ("load", "only") or (args.full == "auto" and psutil.virtual_memory().available > 15e9)
        if full and FULL_LAYERS not in layers:
            for mode in modes:
                free = psutil.virtual_memory().available / 1e9
                if args.full == "auto" and free < 15:
                    print(f"skipping the full load ({mode}): {free:.1f} GB free", flush=True)
                    continue
                run("infer", FULL_LAYERS, mode, bucket=1024, frames=10)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
    report(results, layers, modes, seqs, args)


def report(results: list[dict], layers: list[int], modes: list[str], seqs: list[int], args) -> None:
    # an inference run made with the packed CPU decode weights (before they were turned off: no GPU
    # holds them) counts only where no run without them exists (its row says packed)
    ok = [r for r in results if "error" not in r and r.get("malloc")]   # runs with glibc's default: left out
    unpacked = {(r["layers"], r["quantize"], r["bucket"]) for r in ok if r["kind"] == "infer" and not r.get("packed", True)}
    ok = [r for r in ok if not (r["kind"] == "infer" and r.get("packed", True)
                                and (r["layers"], r["quantize"], r["bucket"]) in unpacked)]
    for r in results:
        if "error" in r:
            print(f"FAILED {r['kind']} L={r['layers']} {r['quantize']} {r.get('seq', '')}: {r['error']}")
    cuda = args.device == "cuda"
    measure = "cuda_max_reserved_gib" if cuda else None

    def pick(kind, mode, seq=None, L=None):
        return [r for r in ok if r["kind"] == kind and r["quantize"] == mode and r.get("seq") == seq
                and (L is None or r["layers"] == L)]

    def value(r):
        return r[measure] if cuda else gpu_estimate(r)

    print(f"\n{'GPU: torch.cuda.max_memory_reserved' if cuda else 'CPU peak RSS stands in for GPU memory'}; "
          f"layers measured {layers}, 28 = {'measured' if FULL_LAYERS in layers else 'extrapolated'} "
          f"(peak = a + b * layers){'' if cuda else f'; GPU estimate = peak RSS - process baseline + {CUDA_CONTEXT_GIB} GiB CUDA context'}\n")
    cases = [("infer", None, f"inference, {args.bucket // 1024}k prompt + {args.frames} frames")] + \
        [("train", s, f"LoRA training step, sequence {s}") for s in seqs]
    print("| case | " + " | ".join(modes) + " |\n| --- |" + " --- |" * len(modes))
    for kind, seq, label in cases:
        cells = []
        for mode in modes:
            rs = sorted(pick(kind, mode, seq), key=lambda r: r["layers"])
            rs = [r for r in rs if r["layers"] in layers]
            if len(rs) >= 2:
                _, slope, at = fit([r["layers"] for r in rs], [value(r) for r in rs], FULL_LAYERS)
                cells.append(f"{at:.2f} GiB ({slope:.3f}/layer)")
            elif rs and rs[0]["layers"] == FULL_LAYERS:
                cells.append(f"{value(rs[0]):.2f} GiB")
            else:
                cells.append("-")
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("\nper case (GiB; s):\n\n| case | layers | mode | peak RSS | baseline | after load | GPU est. | cuda max alloc "
          "| cuda max reserved | load s | prefill s | frames/s | RTF | step s | tokens/s |\n" + "| --- " * 15 + "|")
    for r in ok:
        f = lambda k, fmt=".2f": format(r[k], fmt) if k in r else ""  # noqa: E731
        label = r["kind"] + (f" {r['seq']}" if r.get("seq") else f" {r.get('prompt', '')}+{r.get('frames', '')}"
                             + (" (packed)" if r.get("packed", True) else ""))
        print(f"| {label} | {r['layers']} | {r['quantize']} | {f('peak_rss_gib')} | {f('rss_base_gib')} | "
              f"{f('rss_loaded_gib')} | {gpu_estimate(r):.2f} | {f('cuda_max_allocated_gib')} | "
              f"{f('cuda_max_reserved_gib')} | {f('load_s', '.0f')} | {f('prefill_s', '.1f')} | "
              f"{f('decode_frames_per_s', '.2f')} | {f('rtf', '.1f')} | {f('step_s', '.1f')} | {f('tokens_per_s', '.0f')} |")
    # the fit's weight term against the real 28-layer load
    for mode in modes:
        small = sorted([r for r in pick("infer", mode) if r["layers"] in layers and r.get("bucket") == args.bucket],
                       key=lambda r: r["layers"])
        full = [r for r in pick("infer", mode, L=FULL_LAYERS) if r["bucket"] == 1024]
        if len(small) >= 2 and full:
            _, _, at = fit([r["layers"] for r in small], [r["rss_loaded_gib"] for r in small], FULL_LAYERS)
            print(f"\n{mode}: RSS after loading LLM + codec, 28 layers: extrapolated {at:.2f} GiB, "
                  f"measured {full[0]['rss_loaded_gib']:.2f} GiB (load {full[0]['load_s']:.0f} s)", end="")
    print()


if __name__ == "__main__":
    main(sys.argv[1:])
