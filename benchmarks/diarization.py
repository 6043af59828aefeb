"""Diarization speed and accuracy on CPU: the default backend against the per-clip baseline.

    python benchmarks/diarization.py [minutes=10] [threads=1,2] [seed=0]

Input: a generated conversation of `minutes` minutes (data_pipeline.synth.make_long_file: 3 voices,
30 dB SNR, some music), 16 kHz, with Silero VAD speech regions (VAD time is not counted).

    ours       EmbeddingClusterDiarizer: torch STFT once per region, all 1.6 s windows through the
               encoder in batches of 128, clustering, Viterbi, boundary refinement (everything)
    baseline   what one writes first with resemblyzer's API: VoiceEncoder.embed_utterance(region,
               return_partials=True) per speech region (librosa mel + one encoder call per region),
               embeddings only: no clustering, so the ratio understates the gap

Real-time factor = audio seconds / wall seconds; CPU s = process CPU time (all threads).
DER: pyannote.metrics, 0.25 s collar.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a script from anywhere
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from data_pipeline.stages.base import ANALYSIS_SR  # noqa: E402


def der(utts, turns) -> float:
    from pyannote.core import Annotation, Segment
    from pyannote.metrics.diarization import DiarizationErrorRate

    ref, hyp = Annotation(), Annotation()
    for u in utts:
        ref[Segment(u["start"], u["end"])] = u["speaker"]
    for t in turns:
        hyp[Segment(t.start, t.end)] = t.speaker
    return DiarizationErrorRate(collar=0.25)(ref, hyp, uem=Segment(0, utts[-1]["end"] + 1))


def main(argv: list[str]) -> int:
    args = {"minutes": "10", "threads": "1,2", "seed": "0"}
    for a in argv:
        k, _, v = a.partition("=")
        if k not in args:
            print(__doc__)
            return 2
        args[k] = v
    from data_pipeline.stages.diarization import EmbeddingClusterDiarizer
    from data_pipeline.stages.vad import SileroVAD
    from data_pipeline.synth import make_long_file
    from higgs_train.audio import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.wav"
        utts = make_long_file(path, minutes=float(args["minutes"]), seed=int(args["seed"]), sample_rate=ANALYSIS_SR)
        wav, sr = load_audio(path, ANALYSIS_SR)
    seconds = len(wav) / sr
    speech = SileroVAD()(wav, sr)
    diarizer = EmbeddingClusterDiarizer()
    diarizer(wav[:sr * 20], sr, [r for r in speech if r[1] < 20])  # warm-up (first-call allocations)

    rows = []
    for threads in [int(t) for t in args["threads"].split(",")]:
        torch.set_num_threads(threads)
        t, c = time.perf_counter(), time.process_time()
        turns = diarizer(wav, sr, speech)
        ours, ours_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        for a, b in speech:  # the per-clip baseline: resemblyzer's own utterance API, region by region
            diarizer.encoder.embed_utterance(wav[int(a * sr):int(b * sr)], return_partials=True)
        base, base_cpu = time.perf_counter() - t, time.process_time() - c
        rows.append((threads, ours, ours_cpu, base, base_cpu, len({x.speaker for x in turns}), der(utts, turns)))

    n_spk = len({u["speaker"] for u in utts})
    print(f"diarization, {seconds / 60:.1f} min conversation, {n_spk} speakers, {len(speech)} VAD regions, "
          f"{os.cpu_count()} CPUs visible, load average {os.getloadavg()[0]:.1f}\n")
    print("| threads | ours: wall s | x real time | CPU s | baseline (embed only): wall s | x real time | CPU s "
          "| speedup (wall) | speakers found | DER |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threads, ours, ours_cpu, base, base_cpu, k, error in rows:
        print(f"| {threads} | {ours:.1f} | {seconds / ours:.0f} | {ours_cpu:.1f} | {base:.1f} | {seconds / base:.0f} "
              f"| {base_cpu:.1f} | {base / ours:.1f}x | {k} | {error:.1%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
