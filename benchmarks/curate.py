"""Curation speed and memory: each stage's real-time factor, the whole run's (ASR off), peak RSS on a
long file, all against the obvious per-file / per-clip baseline measured in the same run.

    python -m benchmarks.curate [out=DIR] [workers=N] [baseline_files=3] [two_hours=false]
                                [long_minutes=9] [shapes_only=false]

Corpus: data_pipeline.synth preset "bench" (conversations in several formats and rates, a voice
folder, a 10.5-minute file, broken files), generated once into DIR/corpus.

Ours: `python -m data_pipeline ... transcribe=none workers=N` (a subprocess, as a user runs it).
Baseline, what one writes first (one process, per file, per clip), on the first `baseline_files`
conversations:
    decode      load_audio(path, 16 kHz) for analysis (export reads the source again, below)
    vad         silero_vad.get_speech_timestamps with the streaming ONNX model (one call per 32 ms)
    diarization the same diarizer (no simpler baseline exists; it is timed, not compared)
    quality     speechmos.dnsmos.run per clip (the packaged official DNSMOS script)
    export      per clip: load_segment(source, start, end, 24 kHz) + FLAC encode + tar write
Real-time factor = audio seconds / seconds spent (per stage: summed over workers, i.e. per core).
Peak RSS: the whole pipeline (workers=1) on the long file alone, vs the baseline on it; with
two_hours=true also on a 2-hour file (the long file tiled).

Shapes (shapes_only=true: this part alone): the same audio as one long recording and cut into
`workers` files, each curated with `workers` workers: the real-time factor of each and their ratio
(1.0: a long file keeps every core as busy as many files do), the cores the run kept busy, and peak
RSS. The recording, `long_minutes` long: a generated 3-minute conversation (noise, music), the real
voices of tests/fixtures/real_speech, the same voices under loud noise, looped.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

ROOT = Path(__file__).resolve().parent.parent

from data_pipeline.synth import make_corpus
from higgs_train.cli import parse


@dataclass
class Args:
    out: str = field(default="bench_out/curate", metadata={"help": "work folder (relative to the repository)"})
    workers: int = field(default=len(os.sched_getaffinity(0)), metadata={"help": "curation workers"})
    baseline_files: int = field(default=3, metadata={"help": "conversations the slow baseline runs on"})
    two_hours: bool = field(default=False, metadata={"help": "also the peak RSS on a 2-hour file"})
    long_minutes: float = field(default=9.0, metadata={"help": "minutes of the shapes part's recording"})
    shapes_only: bool = field(default=False, metadata={"help": "only the length-shape table"})


COMMON = ["transcribe=none", "filter.min.dnsmos_ovrl=2.0"]


def run_pipeline(input_dir: Path, out: Path, workers: int) -> tuple[dict, float, float]:
    """(report summary, wall seconds, peak RSS GiB of the run's largest process)."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "data_pipeline", f"input_dir={input_dir}", f"output_dir={out}",
           f"workers={workers}", *COMMON]
    t = time.perf_counter()
    # A fresh wrapper per run: its RUSAGE_CHILDREN peak is this run's largest process alone.
    proc = subprocess.run([sys.executable, "-c", RSS_WRAPPER, *cmd], cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    peak_kib = int(proc.stdout.strip().splitlines()[-1])
    return json.loads((out / "report/summary.json").read_text()), wall, peak_kib / 2 ** 20


RSS_WRAPPER = """import resource, subprocess, sys
rc = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(rc)
"""


BASELINE_CODE = r"""
import io, json, sys, tarfile, time, resource
import silero_vad, speechmos.dnsmos as dnsmos
from higgs_train.audio import load_audio, load_segment
from higgs_train.shards import encode_flac
from data_pipeline.stages.base import Turn
from data_pipeline.stages.diarization import EmbeddingClusterDiarizer
from data_pipeline.stages.segment import Segmenter
files, out, with_quality = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3] == "1"
vad_model = silero_vad.load_silero_vad(onnx=True)
diar, seg = EmbeddingClusterDiarizer(), Segmenter()
t = dict(decode=0.0, vad=0.0, diarization=0.0, segment=0.0, quality=0.0, export=0.0)
audio = 0.0
tar = tarfile.open(out, "w")
for path in files:
    t0 = time.perf_counter(); wav, sr = load_audio(path, 16000); t["decode"] += time.perf_counter() - t0
    audio += len(wav) / sr
    t0 = time.perf_counter()
    speech = [(s["start"], s["end"]) for s in silero_vad.get_speech_timestamps(wav, vad_model, return_seconds=True,
              time_resolution=3)]
    t["vad"] += time.perf_counter() - t0
    t0 = time.perf_counter(); turns = diar(wav, sr, speech) if speech else []; t["diarization"] += time.perf_counter() - t0
    t0 = time.perf_counter(); kept, _ = seg(turns, speech, wav, sr); t["segment"] += time.perf_counter() - t0
    for i, s in enumerate(kept):
        t0 = time.perf_counter()
        if with_quality:
            dnsmos.run(wav[int(s.start * sr):int(s.end * sr)], sr)
        t["quality"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        data = encode_flac(load_segment(path, s.start, s.end, 24000))
        info = tarfile.TarInfo(f"k{len(tar.getmembers())}.flac"); info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        t["export"] += time.perf_counter() - t0
tar.close()
print(json.dumps({"timings": t, "audio_seconds": audio,
                  "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20}))
"""


def run_baseline(files: list[Path], tmp: Path, with_quality: bool = True) -> tuple[dict, float]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", BASELINE_CODE, json.dumps([str(f) for f in files]),
                           str(tmp / "baseline.tar"), "1" if with_quality else "0"], cwd=ROOT, capture_output=True,
                           text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    return json.loads(proc.stdout.strip().splitlines()[-1]), time.perf_counter() - t


def tile_to(src: Path, dst: Path, seconds: float) -> None:
    """A long file made of `src` repeated, written block by block (never all in memory)."""
    info = sf.info(str(src))
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(dst), "w", info.samplerate, 1, format="FLAC", subtype="PCM_16") as f:
        left = int(seconds * info.samplerate)
        while left > 0:
            for block in sf.blocks(str(src), blocksize=info.samplerate * 30, dtype="float32"):
                block = block[:left] if block.ndim == 1 else block.mean(axis=1)[:left]
                f.write(block)
                left -= len(block)
                if left <= 0:
                    break


def shapes_recording(path: Path, minutes: float, work: Path) -> None:
    """The long recording of the shapes comparison (see the docstring), written block by block."""
    import numpy as np
    import soxr

    from data_pipeline.synth import make_long_file
    from higgs_train.audio import load_audio

    sr = 24000
    conv = work / "conversation.flac"
    if not conv.is_file():
        make_long_file(conv, minutes=3.0, seed=1)
    voices = [load_audio(f, sr)[0] for f in sorted((ROOT / "tests/fixtures/real_speech").glob("*.flac"))]
    clean = np.concatenate([np.concatenate([v, np.zeros(sr // 2, np.float32)]) for v in voices])
    rng = np.random.default_rng(0)
    noise = soxr.resample(rng.standard_normal(len(clean) // 3).astype(np.float32), sr // 3, sr)[:len(clean)]
    noisy = clean + noise * (np.sqrt(np.mean(clean ** 2) / np.mean(noise ** 2)) / 10 ** (5 / 20))  # 5 dB SNR
    unit = np.concatenate([load_audio(conv, sr)[0], clean, np.clip(noisy, -1, 1)]).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with sf.SoundFile(str(path), "w", sr, 1, format="FLAC", subtype="PCM_16") as f:
        left = int(minutes * 60 * sr)
        while left > 0:
            f.write(unit[:left])
            left -= len(unit)


def cut(src: Path, out_dir: Path, n: int) -> None:
    """`src` cut into n files of equal length (out_dir/part_00.flac ...)."""
    info = sf.info(str(src))
    step = -(-info.frames // n)
    out_dir.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        wav, sr = sf.read(str(src), start=i * step, stop=min((i + 1) * step, info.frames), dtype="float32")
        sf.write(str(out_dir / f"part_{i:02d}.flac"), wav, sr, subtype="PCM_16")


def shapes(out: Path, workers: int, minutes: float) -> None:
    """One long recording vs the same audio cut into `workers` files, each with `workers` workers."""
    work = out / "shapes"
    long_dir, cut_dir = work / f"long_{minutes:g}min", work / f"cut_{minutes:g}min_{workers}"
    if not (long_dir / "recording.flac").is_file():
        shapes_recording(long_dir / "recording.flac", minutes, work)
    if not (cut_dir / ".done").is_file():
        shutil.rmtree(cut_dir, ignore_errors=True)
        cut(long_dir / "recording.flac", cut_dir, workers)
        (cut_dir / ".done").touch()
    print(f"\nshapes: {minutes:g} min of audio, workers={workers} on {len(os.sched_getaffinity(0))} cores")
    print(f"{'shape':24s} {'wall s':>7s} {'real time':>10s} {'(run)':>8s} {'cores busy':>11s} "
          f"{'quality cores':>14s} {'peak RSS':>9s}")
    speed = {}
    for name, folder in (("one long recording", long_dir), (f"cut into {workers} files", cut_dir)):
        s, wall, rss = run_pipeline(folder, work / f"out_{folder.name}", workers)
        audio = s["hours_in"] * 3600
        speed[name] = audio / wall
        print(f"{name:24s} {wall:7.1f} {rtf(audio, wall):>10s} {str(s['real_time_factor']) + 'x':>8s} "
              f"{s['cores_busy']:>6.2f} of {s['cores']} {s['stage_cores'].get('quality', 0):>14.2f} {rss:>7.2f} GiB")
    long_rtf, cut_rtf = speed.values()
    print(f"long / cut real-time factor: {long_rtf / cut_rtf:.2f} (real time: whole command, start-up included; "
          f"(run): the report's, listing and finalize aside)")


def rtf(audio: float, seconds: float) -> str:
    if seconds <= 0:
        return "-"
    return f"{audio / seconds:.1f}x" if audio / seconds < 10_000 else ">10000x"


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.curate", __doc__)
    out = (ROOT / args.out).resolve()
    workers, n_base = args.workers, args.baseline_files
    if args.shapes_only:
        shapes(out, workers, args.long_minutes)
        return
    corpus = out / "corpus"
    if not (corpus / ".done").is_file():
        shutil.rmtree(corpus, ignore_errors=True)
        make_corpus(corpus, preset="bench")
        (corpus / ".done").touch()
    summary_corpus = sorted(p for p in corpus.rglob("*") if p.is_file() and p.suffix not in (".json", ".txt")
                            and not p.name.startswith("."))
    long_file = corpus / "long/long_conversation.flac"
    print(f"corpus: {len(summary_corpus)} files in {corpus}; machine: {len(os.sched_getaffinity(0))} cores")

    # ---- ours, whole corpus
    ours, wall, _ = run_pipeline(corpus, out / "ours", workers)
    audio = ours["hours_in"] * 3600
    print(f"\nours (workers={workers}, ASR off): {audio / 60:.1f} min of audio in {wall:.1f} s wall "
          f"(incl. start-up) = {audio / wall:.1f}x real time; kept {ours['hours_kept'] * 60:.1f} min")

    # ---- baseline, on the first conversations (it is slow)
    convs = sorted((corpus / "conversations").iterdir())
    base_files = [p for p in convs if p.suffix not in (".json", ".txt")][:n_base]
    base, base_wall = run_baseline(base_files, out)
    # ours on the same files, for a like-for-like whole-run ratio
    sub = out / "baseline_files"
    shutil.rmtree(sub, ignore_errors=True)
    for i, f in enumerate(base_files):
        (sub / f"{i:02d}_{f.name}").parent.mkdir(parents=True, exist_ok=True)
        os.symlink(f, sub / f"{i:02d}_{f.name}")
    ours_sub, ours_sub_wall, _ = run_pipeline(sub, out / "ours_subset", workers)
    ours_sub_1, ours_sub_1_wall, _ = run_pipeline(sub, out / "ours_subset_w1", 1)

    t_ours = ours["timings"]
    b = base["timings"]
    rows = [("decode / ingest", "ingest", "decode"), ("vad", "vad", "vad"), ("diarization", "diarization",
            "diarization"), ("segment", "segment", "segment"), ("quality (DNSMOS + signal)", "quality", "quality"),
            ("export (parts + shards)", ("export", "finalize"), "export")]
    print(f"\nper stage, real-time factor per core (audio seconds / stage seconds)")
    print(f"{'stage':28s} {'ours, corpus':>14s} {'ours, subset':>14s} {'baseline':>12s} {'ratio':>7s}")
    for name, k_ours, k_base in rows:
        keys = k_ours if isinstance(k_ours, tuple) else (k_ours,)
        s_all = sum(t_ours.get(k, 0.0) for k in keys)
        s_sub = sum(ours_sub_1["timings"].get(k, 0.0) for k in keys)
        a_sub = ours_sub_1["hours_in"] * 3600
        ratio = (a_sub / s_sub) / (base["audio_seconds"] / b[k_base]) if s_sub and b[k_base] else float("nan")
        print(f"{name:28s} {rtf(audio, s_all):>14s} {rtf(a_sub, s_sub):>14s} "
              f"{rtf(base['audio_seconds'], b[k_base]):>12s} {ratio:6.1f}x")
    a_sub = ours_sub["hours_in"] * 3600
    print(f"\nwhole run on the baseline's {len(base_files)} files ({a_sub / 60:.1f} min):")
    print(f"  baseline (1 process)      {rtf(base['audio_seconds'], base_wall)} real time ({base_wall:.1f} s)")
    print(f"  ours, workers=1           {rtf(a_sub, ours_sub_1_wall)} real time ({ours_sub_1_wall:.1f} s)"
          f"  = {base_wall / ours_sub_1_wall:.1f}x the baseline")
    print(f"  ours, workers={workers}           {rtf(a_sub, ours_sub_wall)} real time ({ours_sub_wall:.1f} s)"
          f"  = {base_wall / ours_sub_wall:.1f}x the baseline")

    # ---- memory on the long file
    one = out / "long_only"
    shutil.rmtree(one, ignore_errors=True)
    one.mkdir(parents=True)
    os.symlink(long_file, one / long_file.name)
    s_long, w_long, rss_long = run_pipeline(one, out / "ours_long", 1)
    b_long, _ = run_baseline([long_file], out, with_quality=False)  # its DNSMOS is per clip: no memory at stake
    print(f"\nlong file ({s_long['hours_in'] * 60:.1f} min), workers=1: {rtf(s_long['hours_in'] * 3600, w_long)} "
          f"real time, peak RSS {rss_long:.2f} GiB (baseline without DNSMOS {b_long['peak_rss_gib']:.2f} GiB)")
    if args.two_hours:
        two = out / "two_hours"
        if not (two / "two_hours.flac").is_file():
            tile_to(long_file, two / "two_hours.flac", 2 * 3600)
        s2, w2, rss2 = run_pipeline(two, out / "ours_two_hours", 1)
        print(f"2-hour file, workers=1: {rtf(s2['hours_in'] * 3600, w2)} real time ({w2:.0f} s), "
              f"peak RSS {rss2:.2f} GiB")
    shapes(out, workers, args.long_minutes)


if __name__ == "__main__":
    main(sys.argv[1:])
