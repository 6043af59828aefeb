"""pocketsphinx on real recordings: word error rate, its confidence, and what the confidence filter keeps.

    python -m benchmarks.transcription [dir=tests/fixtures/real_speech] [threshold=FILTER_DEFAULT]

Input: every NAME.flac / NAME.wav with a NAME.txt reference in `dir`, each recording one segment (as
the pipeline cuts a one-speaker clip of 6-20 s). English recordings give the WER; a recording whose
reference is not English (no ASCII letters) is the language check: the transcriber must reject it
`no_english_recognised`. WER is over words (normalize_text of data_pipeline/stages/transcribe.py):
errors summed over recordings / reference words summed.

Printed: per recording WER, `asr_confidence` and the decision; overall WER; WER of the recordings
the filter keeps (asr_confidence >= threshold, default: configs/pipeline/filter/default.yaml's) and
the share of speech seconds kept; the curve of kept WER against kept share over every threshold
that changes what is kept.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from higgs_train.cli import parse

ROOT = Path(__file__).resolve().parent.parent


def load(d: Path) -> list[tuple[str, np.ndarray, str]]:
    """[(name, 16 kHz mono, reference text)] of the recordings with a .txt beside them."""
    from higgs_train.audio import load_audio

    out = []
    for txt in sorted(d.glob("*.txt")):
        audio = next((p for p in (txt.with_suffix(".flac"), txt.with_suffix(".wav")) if p.is_file()), None)
        if audio is not None:
            out.append((txt.stem, load_audio(audio, 16_000)[0], txt.read_text().strip()))
    return out


def curve(rows: list[dict]) -> list[tuple[float, float, float, int]]:
    """[(threshold, kept WER, kept share of seconds, kept recordings)] for each distinct confidence."""
    total_s = sum(r["seconds"] for r in rows)
    out = []
    for thr in sorted({r["confidence"] for r in rows}):
        kept = [r for r in rows if r["confidence"] >= thr]
        words = sum(r["words"] for r in kept)
        out.append((thr, sum(r["errors"] for r in kept) / words, sum(r["seconds"] for r in kept) / total_s,
                    len(kept)))
    return out


@dataclass
class Args:
    dir: str = field(default=str(ROOT / "tests/fixtures/real_speech"),
                     metadata={"help": "recordings, each with a NAME.txt reference"})
    threshold: Optional[float] = field(default=None, metadata={
        "help": "asr_confidence floor (null: configs/pipeline/filter/default.yaml's)"})


def main(argv: list[str]) -> int:
    from omegaconf import OmegaConf

    from data_pipeline.stages.base import Segment
    from data_pipeline.stages.transcribe import normalize_text, word_error_rate
    from data_pipeline.stages.transcribe_pocketsphinx import PocketsphinxTranscriber

    args = parse(Args, argv, "python -m benchmarks.transcription", __doc__)
    thr = args.threshold if args.threshold is not None else \
        OmegaConf.load(ROOT / "configs/pipeline/filter/default.yaml").min.asr_confidence
    cfg = OmegaConf.load(ROOT / "configs/pipeline/transcribe/pocketsphinx.yaml")
    asr = PocketsphinxTranscriber(**{k: v for k, v in OmegaConf.to_container(cfg).items() if k != "_target_"})

    rows, foreign = [], []
    print(f"{'recording':16s} {'s':>5s} {'words':>5s} {'WER':>5s} {'conf':>5s}  decision")
    for name, wav, ref in load(Path(args.dir)):
        tr = asr.transcribe([wav], 16_000, [Segment(0, len(wav) / 16_000, "S0")], Path(name))[0]
        conf = tr.scores["asr_confidence"]
        english = any("a" <= c <= "z" for c in ref.lower())
        if tr.rejected:
            decision = f"rejected {tr.rejected}"
        else:
            decision = "kept" if conf >= thr else "rejected low_asr_confidence"
        words = len(normalize_text(ref))
        wer = word_error_rate(ref, tr.text) if english else float("nan")
        print(f"{name:16s} {len(wav) / 16_000:5.1f} {words if english else '-':>5} {wer:5.2f} {conf:5.3f}  {decision}")
        if english:
            rows.append({"name": name, "seconds": len(wav) / 16_000, "words": words, "errors": wer * words,
                         "confidence": conf})
        else:
            foreign.append((name, decision))

    words = sum(r["words"] for r in rows)
    print(f"\noverall WER {sum(r['errors'] for r in rows) / words:.3f} over {words} words, {len(rows)} recordings")
    kept = [r for r in rows if r["confidence"] >= thr]
    if kept:
        kw = sum(r["words"] for r in kept)
        print(f"filter asr_confidence >= {thr}: kept WER {sum(r['errors'] for r in kept) / kw:.3f} over {kw} words, "
              f"kept share {sum(r['seconds'] for r in kept) / sum(r['seconds'] for r in rows):.3f} of the speech "
              f"({len(kept)}/{len(rows)} recordings)")
    else:
        print(f"filter asr_confidence >= {thr}: nothing kept")
    for name, decision in foreign:
        print(f"non-English {name}: {decision}")
    print("\nthreshold  kept WER  kept share  recordings")
    for t, w, share, n in curve(rows):
        print(f"{t:9.3f}  {w:8.3f}  {share:10.3f}  {n:10d}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
