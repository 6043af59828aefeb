"""Diarization on CPU: accuracy on real and synthetic speech side by side, and speed against the
per-clip baseline.

    python -m benchmarks.diarization [part=[accuracy,speed]] [minutes=10] [threads=[1,2]] [seed=0]

Accuracy (part=accuracy): the default VAD (Silero) + diarization (EmbeddingClusterDiarizer), the
speaker count never given, on
    real       pyannote.audio's sample conversation (30 s, 2 speakers, its RTTM as truth); each real
               single-voice clip of tests/fixtures/real_speech/ whole, with white noise at 10 dB SNR
               and its first half only (truth: 1 speaker); two-speaker conversations spliced from
               every pair of those clips (data_pipeline/splice.py: 3 turns each, pauses 0.5-1 s)
    synthetic  espeak-ng conversations of 1-4 voices (data_pipeline.synth, the tests' seeds), each of
               its 8 voices alone for 40 sentences (~3.5 min), clean and at 10 dB SNR (truth: 1
               speaker), and the `minutes`-long 3-voice file of the speed part
DER: pyannote.metrics, collar 0.25 s, overlapped speech left out (data_pipeline/diarization_score.py).
A count error is a file whose number of speakers found differs from the truth.

Speed (part=speed):

Input: a generated conversation of `minutes` minutes (data_pipeline.synth.make_long_file: 3 voices,
30 dB SNR, some music), 16 kHz, with Silero VAD speech regions (VAD time is not counted).

    ours       EmbeddingClusterDiarizer: torch STFT once per region, all 1.6 s windows through the
               encoder in batches of 128, clustering, Viterbi, boundary refinement (everything)
    baseline   what one writes first with resemblyzer's API: VoiceEncoder.embed_utterance(region,
               return_partials=True) per speech region (librosa mel + one encoder call per region),
               embeddings only: no clustering, so the ratio understates the gap

Real-time factor = audio seconds / wall seconds; CPU s = process CPU time (all threads).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import List

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")
warnings.filterwarnings("ignore")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from data_pipeline.stages.base import ANALYSIS_SR  # noqa: E402
from higgs_train.cli import parse  # noqa: E402


REAL = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "real_speech"


def real_material(vad) -> list[tuple[str, str, np.ndarray, list, list | None]]:
    """(group, name, 16 kHz audio, VAD regions, truth turns or None for one speaker)."""
    from data_pipeline.diarization_score import pyannote_sample
    from data_pipeline.splice import splice_conversation
    from higgs_train.audio import load_audio

    path, truth = pyannote_sample()
    wav, sr = load_audio(path, ANALYSIS_SR)
    out = [("real: pyannote sample", "sample.wav", wav, vad(wav, sr), truth)]
    clips = {}
    for f in sorted(REAL.glob("*.flac")):
        wav, _ = load_audio(f, ANALYSIS_SR)
        clips[f.stem] = (f.stem, wav, vad(wav, ANALYSIS_SR))
    for name, wav, speech in clips.values():
        power = np.mean(np.concatenate([wav[int(a * ANALYSIS_SR):int(b * ANALYSIS_SR)] for a, b in speech]) ** 2)
        noisy = (wav + np.random.default_rng(0).standard_normal(len(wav)) * np.sqrt(power / 10)).astype(np.float32)
        half = wav[:len(wav) // 2]
        out += [("real: one voice, whole", name, wav, speech, None),
                ("real: one voice, 10 dB noise", name, noisy, vad(noisy, ANALYSIS_SR), None),
                ("real: one voice, first half", name, half, vad(half, ANALYSIS_SR), None)]
    names = sorted(clips)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            wav, truth = splice_conversation(clips[a], clips[b], ANALYSIS_SR, turns=3, seed=i)
            out.append(("real: 2 voices spliced", f"{a}+{b}", wav, vad(wav, ANALYSIS_SR), truth))
    return out


def synthetic_material(vad, long_wav, long_utts) -> list:
    from data_pipeline.synth import VOICES, make_conversation
    from higgs_train.audio import load_audio

    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for n, turns, seed in [(1, 6, 4), (2, 12, 10), (3, 14, 11), (4, 16, 12)]:
            path = Path(tmp) / f"conv{n}.wav"
            utts = make_conversation(path, n_speakers=n, n_turns=turns, seed=seed, sample_rate=ANALYSIS_SR)
            wav, _ = load_audio(path, ANALYSIS_SR)
            out.append((f"synthetic: {n} voice{'s' * (n > 1)}", path.name, wav, vad(wav, ANALYSIS_SR), utts))
        for i, voice in enumerate(VOICES):  # long recordings of one voice stay one speaker, clean or noisy
            for snr in (None, 10.0):
                path = Path(tmp) / f"{voice.name}_{snr}.wav"
                make_conversation(path, n_speakers=1, n_turns=40, seed=100 + i, sample_rate=ANALYSIS_SR,
                                  voices=[voice], snr_db=snr)
                wav, _ = load_audio(path, ANALYSIS_SR)
                out.append((f"synthetic: 1 voice, 3.5 min, {'clean' if snr is None else '10 dB noise'}",
                            voice.name, wav, vad(wav, ANALYSIS_SR), None))
    out.append(("synthetic: 3 voices, long", f"{len(long_wav) / ANALYSIS_SR / 60:.0f} min", long_wav,
                vad(long_wav, ANALYSIS_SR), long_utts))
    return out


def accuracy(diarizer, material) -> None:
    from data_pipeline.diarization_score import der

    print("| material | file | s | speakers: truth / found | DER |")
    print("|---|---|---|---|---|")
    groups: dict[str, list] = {}
    for group, name, wav, speech, truth in material:
        turns = diarizer(wav, ANALYSIS_SR, speech)
        want = len({u["speaker"] for u in truth}) if truth else 1
        found = len({t.speaker for t in turns})
        error = der(truth, turns, len(wav) / ANALYSIS_SR) if truth else None
        groups.setdefault(group, []).append((found != want, error))
        print(f"| {group} | {name} | {len(wav) / ANALYSIS_SR:.1f} | {want} / {found} | "
              f"{'-' if error is None else f'{error:.3f}'} |")
    print("\n| material | files | count errors | DER: mean / worst |")
    print("|---|---|---|---|")
    for group, rows in groups.items():
        ders = [e for _, e in rows if e is not None]
        summary = f"{np.mean(ders):.3f} / {max(ders):.3f}" if ders else "-"
        print(f"| {group} | {len(rows)} | {sum(bad for bad, _ in rows)} | {summary} |")


def der_of(utts, turns) -> float:
    from data_pipeline.diarization_score import der
    return der(utts, turns, utts[-1]["end"] + 1)


@dataclass
class Args:
    part: List[str] = field(default_factory=lambda: ["accuracy", "speed"], metadata={"help": "accuracy, speed"})
    minutes: float = field(default=10.0, metadata={"help": "the generated conversation's length"})
    threads: List[int] = field(default_factory=lambda: [1, 2], metadata={"help": "torch threads, one speed row each"})
    seed: int = field(default=0, metadata={"help": "the generated conversation's seed"})


def main(argv: list[str]) -> int:
    args = parse(Args, argv, "python -m benchmarks.diarization", __doc__)
    from data_pipeline.stages.diarization import EmbeddingClusterDiarizer
    from data_pipeline.stages.vad import SileroVAD
    from data_pipeline.synth import make_long_file
    from higgs_train.audio import load_audio

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "long.wav"
        utts = make_long_file(path, minutes=args.minutes, seed=args.seed, sample_rate=ANALYSIS_SR)
        wav, sr = load_audio(path, ANALYSIS_SR)
    seconds = len(wav) / sr
    vad = SileroVAD()
    diarizer = EmbeddingClusterDiarizer()
    parts = args.part
    if "accuracy" in parts:
        print(f"diarization accuracy (default VAD + diarization, speaker count not given), "
              f"{os.cpu_count()} CPUs visible\n")
        accuracy(diarizer, real_material(vad) + synthetic_material(vad, wav, utts))
        print()
    if "speed" not in parts:
        return 0
    speech = vad(wav, sr)
    diarizer(wav[:sr * 20], sr, [r for r in speech if r[1] < 20])  # warm-up (first-call allocations)

    rows = []
    for threads in args.threads:
        torch.set_num_threads(threads)
        t, c = time.perf_counter(), time.process_time()
        turns = diarizer(wav, sr, speech)
        ours, ours_cpu = time.perf_counter() - t, time.process_time() - c
        t, c = time.perf_counter(), time.process_time()
        for a, b in speech:  # the per-clip baseline: resemblyzer's own utterance API, region by region
            diarizer.encoder.embed_utterance(wav[int(a * sr):int(b * sr)], return_partials=True)
        base, base_cpu = time.perf_counter() - t, time.process_time() - c
        rows.append((threads, ours, ours_cpu, base, base_cpu, len({x.speaker for x in turns}), der_of(utts, turns)))

    n_spk = len({u["speaker"] for u in utts})
    print(f"diarization speed, {seconds / 60:.1f} min conversation, {n_spk} speakers, {len(speech)} VAD regions, "
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
