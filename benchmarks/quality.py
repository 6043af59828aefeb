"""Quality and ASR stage speed: DNSMOS batched vs one clip at a time, and pocketsphinx.

    python -m benchmarks.quality [minutes=2] [asr_seconds=40]

Clips are espeak-ng sentences (3-20 s, a third with white noise) at 24 kHz, the rate
the pipeline hands to the quality stage. Rows:
  official per clip   speechmos.dnsmos.run on each clip: Microsoft's script as shipped in
                      the wheel (1 s hop, one session.run per 9.01 s window, P.808 too)
  ours, 1 clip/run    DNSMOS.dnsmos one clip per call, batch_size=1, 1 s hop
  ours, batched       all windows of all clips batched, 1 s hop (official windows)
  ours, batched, hop  the config default hop (configs/pipeline/quality/dnsmos.yaml)
  score() all scores  the whole stage: DNSMOS + SNR, clipping, bandwidth, loudness
RTF = audio seconds / wall seconds (higher is faster); cpu RTF = audio seconds / CPU
seconds of this process (all threads), i.e. per core: what an unshared core would give;
cpu s/win = CPU seconds per 9.01 s DNSMOS window (the model's fixed input: every clip
costs at least one window, short clips are tiled up to it).
|d OVRL| is the mean absolute difference to the official script's OVRL.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soxr
from omegaconf import OmegaConf

from data_pipeline.stages.base import Segment
from data_pipeline.stages.quality import DNSMOS, DNSMOS_SR, tile, window_starts
from data_pipeline.stages.transcribe import word_error_rate
from data_pipeline.stages.transcribe_pocketsphinx import PocketsphinxTranscriber
from data_pipeline.synth import SENTENCES, VOICES, tts
from higgs_train.cli import parse

SR = 24_000
CONFIG = Path(__file__).resolve().parents[1] / "configs/pipeline/quality/dnsmos.yaml"


def make_clips(minutes: float, seed: int = 0) -> tuple[list[np.ndarray], list[str]]:
    rng = np.random.default_rng(seed)
    clips, texts, total, k = [], [], 0.0, 0
    while total < minutes * 60:
        target = rng.uniform(3, 20)
        parts, words, dur = [], [], 0.0
        while dur < target:
            s = SENTENCES[k % len(SENTENCES)]
            k += 1
            w = tts(s, VOICES[k % 4], SR)
            parts += [w, np.zeros(int(rng.uniform(0.2, 0.6) * SR), np.float32)]
            words.append(s)
            dur += len(w) / SR
        x = np.concatenate(parts)
        x *= 0.5 / np.abs(x).max()
        if len(clips) % 3 == 2:
            x = x + rng.standard_normal(len(x)).astype(np.float32) * 0.03
        clips.append(np.clip(x, -1, 1).astype(np.float32))
        texts.append(" ".join(words))
        total += len(x) / SR
    return clips, texts


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


@dataclass
class Args:
    minutes: float = field(default=2.0, metadata={"help": "espeak-ng clips scored, in minutes of audio"})
    asr_seconds: float = field(default=40.0, metadata={"help": "audio seconds pocketsphinx transcribes"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.quality", __doc__)

    clips, texts = make_clips(args.minutes)
    audio_s = sum(len(c) for c in clips) / SR
    clips16 = [np.clip(soxr.resample(c, SR, DNSMOS_SR), -1, 1).astype(np.float32) for c in clips]
    default_hop = float(OmegaConf.load(CONFIG).metrics.dnsmos.hop_seconds)
    print(f"{len(clips)} clips, {audio_s:.0f} s of audio (3-20 s each), 24 kHz in; default hop {default_hop} s")

    from speechmos import dnsmos

    def windows(hop: float) -> int:
        return sum(len(window_starts(len(tile(x)), hop)) for x in clips16)

    rows = []
    official, w, c = timed(lambda: [dnsmos.run(x, DNSMOS_SR)["ovrl_mos"] for x in clips16])
    official = np.array(official)
    rows.append(("DNSMOS official per clip (speechmos)", w, c, 0.0, windows(1.0)))

    one = DNSMOS(batch_size=1, hop_seconds=1.0)
    one.dnsmos(clips16[:1])  # session built outside the timing (it is shared by all scorers)
    mos, w, c = timed(lambda: np.concatenate([one.dnsmos([x]) for x in clips16]))
    rows.append(("DNSMOS ours, 1 clip/run, 1 s hop", w, c, np.abs(mos[:, 2] - official).mean(), windows(1.0)))

    batched = DNSMOS(hop_seconds=1.0)
    mos, w, c = timed(lambda: batched.dnsmos(clips16))
    rows.append(("DNSMOS ours, batched, 1 s hop", w, c, np.abs(mos[:, 2] - official).mean(), windows(1.0)))

    fast = DNSMOS(hop_seconds=default_hop)
    mos, w, c = timed(lambda: fast.dnsmos(clips16))
    rows.append((f"DNSMOS ours, batched, {default_hop:g} s hop", w, c, np.abs(mos[:, 2] - official).mean(),
                 windows(default_hop)))

    scores, w, c = timed(lambda: fast.score(clips, SR))
    rows.append(("score(): DNSMOS + SNR/clip/bw/LUFS", w, c, np.abs(np.array([s["dnsmos_ovrl"] for s in scores])
                                                                   - official).mean(), windows(default_hop)))

    print(f"\n{'stage':44s} {'windows':>7s} {'wall s':>8s} {'RTF':>7s} {'cpu RTF':>8s} {'cpu s/win':>9s} "
          f"{'|d OVRL|':>9s}")
    for name, w, c, d, n in rows:
        print(f"{name:44s} {n:7d} {w:8.1f} {audio_s / w:7.1f} {audio_s / c:8.1f} {c / n:9.3f} {d:9.3f}")

    # ASR: pocketsphinx on the first clips up to --asr-seconds, WER against the espeak text.
    n, acc = 0, 0.0
    while n < len(clips) and acc < args.asr_seconds:
        acc += len(clips[n]) / SR
        n += 1
    asr = PocketsphinxTranscriber()
    segs = [Segment(0.0, len(x) / SR, "S0") for x in clips[:n]]
    asr.transcribe(clips16[:1], DNSMOS_SR, segs[:1], Path("x.wav"))  # decoder built outside the timing
    out, w, c = timed(lambda: asr.transcribe(clips16[:n], DNSMOS_SR, segs, Path("x.wav")))
    wer = np.mean([word_error_rate(t, o.text) for t, o in zip(texts[:n], out)])
    print(f"{'pocketsphinx (' + f'{acc:.0f} s audio, WER {wer:.2f})':44s} {'':7s} {w:8.1f} {acc / w:7.1f} "
          f"{acc / c:8.1f}")


if __name__ == "__main__":
    main(sys.argv[1:])
