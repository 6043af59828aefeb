"""Two or more evaluation runs side by side: did fine-tuning (or a new checkpoint) help?

    python -m higgs_train.evaluate.compare eval/base eval/finetuned [out=compare.md] \
        [higher=sim_me] [lower=sim_alice,sim_bob,wer]

Reads each run's summary.json (python -m recipes.evaluate) and prints a markdown table: one
row per metric mean and per stop reason's share of the items (stop_eos, stop_budget, ...: how
generation ended, higgs_train/llm/stops.py), one column per run, and the change from the first run in the last column.
`higher=` / `lower=` (comma-separated metrics) check the direction of each change from the first
run to the last, print one line per metric, and exit 1 when one moved the wrong way (or is
missing): a gate for CI or a fine-tuning recipe.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional


def load_means(run: Path) -> dict[str, float]:
    f = run / "summary.json" if run.is_dir() else run
    if not f.is_file():
        raise FileNotFoundError(f"no evaluation summary at {f} (run python -m recipes.evaluate first)")
    summary = json.loads(f.read_text())
    return {**summary["means"], **{f"stop_{k}": v for k, v in summary.get("stop_reasons", {}).items()}}


def table(runs: list[Path]) -> str:
    means = [load_means(r) for r in runs]
    metrics = sorted({k for m in means for k in m})
    head = ["metric", *(r.name if r.is_dir() else r.parent.name for r in runs), "change"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for k in metrics:
        vals = [m.get(k) for m in means]
        cells = [f"{v:.4f}" if v is not None else "" for v in vals]
        change = f"{vals[-1] - vals[0]:+.4f}" if None not in (vals[0], vals[-1]) else ""
        lines.append("| " + " | ".join([k, *cells, change]) + " |")
    return "\n".join(lines) + "\n"


def check(runs: list[Path], higher: list[str], lower: list[str]) -> list[tuple[str, bool]]:
    """(line, ok) per metric: did it move the expected way from the first run to the last?"""
    first, last = load_means(runs[0]), load_means(runs[-1])
    out = []
    for names, sign, word in ((higher, 1, "higher"), (lower, -1, "lower")):
        for k in names:
            if k not in first or k not in last:
                out.append((f"{k}: missing from a run, expected {word}: NOT MET", False))
                continue
            d = last[k] - first[k]
            ok = d * sign > 0
            out.append((f"{k}: {first[k]:.4f} -> {last[k]:.4f} ({d:+.4f}), expected {word}: "
                        f"{'ok' if ok else 'NOT MET'}", ok))
    return out


@dataclass
class Args:
    runs: List[str] = field(default_factory=list, metadata={"help": "evaluation output folders, first = baseline"})
    out: Optional[str] = field(default=None, metadata={"help": "also write the table to this file"})
    higher: str = field(default="", metadata={"help": "metrics that must rise, comma-separated"})
    lower: str = field(default="", metadata={"help": "metrics that must fall, comma-separated"})


def main(argv: list[str]) -> int:
    from higgs_train.cli import parse

    args = parse(Args, argv, "python -m higgs_train.evaluate.compare RUN RUN [...]", __doc__, positional="runs")
    runs = [Path(r) for r in args.runs]
    if len(runs) < 2:
        print(f"error: give two or more evaluation folders, got {len(runs)}", file=sys.stderr)
        return 2
    try:
        text = table(runs)
        checks = check(runs, *([m for m in getattr(args, k).split(",") if m] for k in ("higher", "lower")))
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    text += "".join(f"\n{line}" for line, _ in checks) + ("\n" if checks else "")
    print(text, end="")
    if args.out:
        Path(args.out).write_text(text)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
