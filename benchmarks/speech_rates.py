"""Speech rates behind the frame budget (higgs_train/llm/stops.py RATES and StopRules' budget).

    python -m benchmarks.speech_rates [synthetic=6]

1. The recorded clips of tests/fixtures/real_speech (English and Mandarin, with transcripts): each
   clip's speech is split into voiced time and pauses (40 ms frames, silent = 35 dB below the
   clip's loudest frame, a pause = a silent run of >= 0.12 s inside the speech). Fitted from all
   clips: seconds per pause = pause time / clause-ending punctuation marks; seconds per Latin letter
   = English voiced time / letters; seconds per CJK character = Mandarin voiced time / characters.
2. Every utterance of `synthetic` espeak-ng conversations (data_pipeline/synth.py: voices varied
   in speed and pitch) against the fitted rates.
Prints the fitted rates and, per clip and over the synthetic utterances, the ratio of the spoken
duration to expected_seconds with those rates: the spread that budget_factor has to cover.
"""
from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from higgs_train.audio import load_audio
from higgs_train.cli import parse
from higgs_train.llm.stops import RATES, expected_seconds, text_units

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "real_speech"
FRAME_S, SILENT_DB, MIN_PAUSE_S = 0.04, -35.0, 0.12


def voiced(path: Path) -> tuple[float, float]:
    """(seconds from the first to the last voiced frame, seconds of pauses inside them)."""
    wav, sr = load_audio(path)
    n = int(FRAME_S * sr)
    frames = wav[:len(wav) // n * n].reshape(-1, n).astype(np.float64)
    db = 20 * np.log10(np.maximum(np.sqrt((frames ** 2).mean(1)), 1e-10))
    loud = db >= db.max() + SILENT_DB
    idx = np.flatnonzero(loud)
    inner = loud[idx[0]:idx[-1] + 1]
    pause, run = 0, 0
    for v in inner:
        if v:
            pause += run if run * FRAME_S >= MIN_PAUSE_S else 0
            run = 0
        else:
            run += 1
    return len(inner) * FRAME_S, pause * FRAME_S


@dataclass
class Args:
    synthetic: int = field(default=6, metadata={"help": "espeak-ng conversations to measure (0: none)"})


def main(argv: list[str]) -> None:
    args = parse(Args, argv, "python -m benchmarks.speech_rates", __doc__)
    clips = []
    for txt in sorted(FIXTURES.glob("*.txt")):
        if txt.name == "README.md":
            continue
        text = txt.read_text(encoding="utf-8").strip()
        span, pause = voiced(txt.with_suffix(".flac"))
        u = text_units(text.rstrip(".!?。！？"))   # the pause after the last word is not inside the speech
        clips.append({"clip": txt.stem, "seconds": span, "pause_s": pause, **u})
    marks = sum(c["pause"] for c in clips)
    pause_s = sum(c["pause_s"] for c in clips) / marks
    en = [c for c in clips if c["letter"] > c["cjk"]]
    zh = [c for c in clips if c["cjk"] >= c["letter"]]
    letter_s = sum(c["seconds"] - c["pause_s"] for c in en) / sum(c["letter"] for c in en)
    cjk_s = sum(c["seconds"] - c["pause_s"] for c in zh) / sum(c["cjk"] for c in zh)
    fitted = {"letter": letter_s, "cjk": cjk_s, "digit": 4.0 * letter_s, "pause": pause_s}
    print("fitted seconds per unit:", {k: round(v, 4) for k, v in fitted.items()})
    print("RATES in higgs_train/llm/stops.py:", RATES)
    print(f"pauses: {sum(c['pause_s'] for c in clips):.2f} s over {marks} marks; "
          f"English {sum(c['letter'] for c in en)} letters, {1 / letter_s:.1f} letters/s; "
          f"Mandarin {sum(c['cjk'] for c in zh)} characters, {1 / cjk_s:.2f} characters/s")
    print("\n| clip | seconds (voiced span) | pauses s | letters | CJK | marks | expected s | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for c, txt in zip(clips, sorted(t for t in FIXTURES.glob("*.txt"))):
        exp = expected_seconds(txt.read_text(encoding="utf-8"))
        print(f"| {c['clip']} | {c['seconds']:.2f} | {c['pause_s']:.2f} | {c['letter']} | {c['cjk']} | {c['pause']} "
              f"| {exp:.2f} | {c['seconds'] / exp:.2f} |")
    if args.synthetic:
        from data_pipeline.synth import make_conversation

        ratios = []
        with tempfile.TemporaryDirectory() as d:
            for seed in range(args.synthetic):
                for u in make_conversation(Path(d) / f"c{seed}.wav", n_speakers=3, n_turns=10, seed=seed):
                    ratios.append((u["end"] - u["start"]) / expected_seconds(u["text"]))
        r = np.array(ratios)
        print(f"\nespeak-ng: {len(r)} utterances, spoken / expected: mean {r.mean():.2f}, "
              f"min {r.min():.2f}, p5 {np.percentile(r, 5):.2f}, p95 {np.percentile(r, 95):.2f}, max {r.max():.2f}")
        print(json.dumps({"fitted": fitted, "synthetic_ratio_max": float(r.max())}))


if __name__ == "__main__":
    main(sys.argv[1:])
