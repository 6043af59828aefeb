"""Two or more evaluation runs side by side: did fine-tuning (or a new checkpoint) help?

    python -m higgs_train.evaluate.compare eval/base eval/finetuned [out=compare.md]

Reads each run's summary.json (python -m higgs_train.evaluate) and prints a markdown table: one
row per metric mean, one column per run, and the change from the first run in the last column.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load_means(run: Path) -> dict[str, float]:
    f = run / "summary.json" if run.is_dir() else run
    if not f.is_file():
        raise FileNotFoundError(f"no evaluation summary at {f} (run python -m higgs_train.evaluate first)")
    return json.loads(f.read_text())["means"]


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


def main(argv: list[str]) -> int:
    runs = [Path(a) for a in argv if "=" not in a]
    opts = dict(a.split("=", 1) for a in argv if "=" in a)
    if len(runs) < 2 or set(opts) - {"out"}:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        text = table(runs)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(text, end="")
    if "out" in opts:
        Path(opts["out"]).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
