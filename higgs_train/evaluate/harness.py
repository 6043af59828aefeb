"""The evaluation loop: speak every item, score the audio, write the table.

    result = evaluate(synthesizer, scorers, items, out_dir)

The harness knows two small protocols and nothing of the wings that implement them (config
wires them in: inference/evaluation.py speaks, data_pipeline/eval_scorers.py scores):

    synthesizer(text, voice=None, reference_audio=None, reference_text=None) -> (audio float32, sr)
                or (audio, sr, {"stop_reason": ...}): how generation ended (higgs_train/llm/stops.py)
    scorer(audio, sr, item) -> {metric: value}        (a str value, e.g. the ASR text, is kept
                                                       in the table but not averaged)

The harness times each synthesis call itself: rtf = synthesis seconds / audio seconds, and measures
duration_ratio = audio seconds / the text's expected duration (higgs_train.llm.stops.expected_seconds,
the rule the engine's frame budget uses); summary.json's stop_reasons holds the share of items per
stop reason.
Writes into out_dir (each file under a temp name, renamed when whole):
    <id>.wav        the generated audio
    results.csv     one row per item: id, text, status, audio, seconds, synth_seconds, rtf, metrics
    results.md      the same as a markdown table, with a row of means
    summary.json    counts, means of every numeric metric, the failed items and why, `meta`
    metrics.png     one panel per numeric metric (plots.py)
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from higgs_train.audio import save_audio
from higgs_train.files import write_text_atomic
from higgs_train.evaluate.evalset import BadItem, EvalItem
from higgs_train.evaluate.metrics import metric_means
from higgs_train.llm.stops import STOP_REASONS, expected_seconds

log = logging.getLogger(__name__)

BASE_COLUMNS = ["id", "text", "status", "audio", "seconds", "synth_seconds", "rtf", "stop_reason", "duration_ratio"]


class Synthesizer(Protocol):
    def __call__(self, text: str, voice: str | None = None, reference_audio: Path | None = None,
                 reference_text: str | None = None) -> tuple[np.ndarray, int] | tuple[np.ndarray, int, dict]: ...


class Scorer(Protocol):
    def __call__(self, audio: np.ndarray, sr: int, item: EvalItem) -> dict: ...


@dataclass
class EvalResult:
    rows: list[dict]        # one per item (failed ones too, with status = the error)
    summary: dict           # what summary.json holds
    out_dir: Path


def evaluate(synthesizer: Synthesizer | Callable, scorers: dict[str, Scorer], items: list[EvalItem],
             out_dir, bad: list[BadItem] = (), progress: bool = True, meta: dict | None = None) -> EvalResult:
    """Speak and score every item; an item that fails (unknown voice, a scorer error) gets its
    error as status and the run goes on."""
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"id": b.id, "text": "", "status": f"bad item: {b.error}"} for b in bad]
    for item in tqdm(items, desc="evaluate", unit="item", disable=not progress, file=sys.stderr):
        row = {"id": item.id, "text": item.text, "status": "ok"}
        try:
            t0 = time.perf_counter()
            audio, sr, *info = synthesizer(item.text, voice=item.voice, reference_audio=item.reference_audio,
                                           reference_text=item.reference_text)
            took = time.perf_counter() - t0
            row.update(*info)
            audio = np.asarray(audio, np.float32).reshape(-1)
            seconds = len(audio) / sr
            wav = save_audio(out / f"{item.id}.wav", audio, sr)
            row.update(audio=wav.name, seconds=round(seconds, 3), synth_seconds=round(took, 3),
                       rtf=round(took / seconds, 4) if seconds else math.nan,
                       duration_ratio=round(seconds / max(expected_seconds(item.text), 1e-3), 4))
            for name, scorer in scorers.items():
                row.update(scorer(audio, sr, item))
        except Exception as e:   # noqa: BLE001 - one bad item must not end an evaluation run
            log.warning("item %s failed: %s: %s", item.id, type(e).__name__, e)
            row["status"] = f"{type(e).__name__}: {e}"
        rows.append(row)
    columns = BASE_COLUMNS + [k for k in dict.fromkeys(k for r in rows for k in r) if k not in BASE_COLUMNS]
    means = metric_means(rows)
    summary = {"items": len(rows), "ok": sum(r["status"] == "ok" for r in rows), "means": means,
               "stop_reasons": stop_shares(rows),
               "failed": [{"id": r["id"], "error": r["status"]} for r in rows if r["status"] != "ok"],
               "meta": meta or {}}
    write_text_atomic(out / "results.csv", _csv(rows, columns))
    write_text_atomic(out / "results.md", markdown_table(rows, columns, means))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str) + "\n")
    from higgs_train.evaluate.plots import plot_metrics

    plot_metrics(rows, list(means), out / "metrics.png")
    log.info("evaluated %d items (%d ok) into %s: %s; stop reasons %s", len(rows), summary["ok"], out,
             ", ".join(f"{k}={v:.3g}" for k, v in means.items()), summary["stop_reasons"] or "not reported")
    return EvalResult(rows, summary, out)


def stop_shares(rows: list[dict]) -> dict[str, float]:
    """Share of the items that report a stop reason, per reason (every reason listed, 0 included)."""
    told = [r["stop_reason"] for r in rows if r["status"] == "ok" and r.get("stop_reason")]
    return {k: round(told.count(k) / len(told), 4) for k in STOP_REASONS} if told else {}


def _csv(rows: list[dict], columns: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, columns, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def _cell(v, width: int = 48) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if math.isfinite(v) else ""
    s = " ".join(str(v).split()).replace("|", "\\|")
    return s if len(s) <= width else s[:width - 1] + "…"


def markdown_table(rows: list[dict], columns: list[str], means: dict[str, float]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    lines.append("| " + " | ".join("**mean**" if c == "id" else _cell(means.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"

