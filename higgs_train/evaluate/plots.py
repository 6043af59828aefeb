"""metrics.png: one panel per numeric metric, a bar per item (a histogram past 40 items), the mean dashed."""
from __future__ import annotations

import math
from pathlib import Path

from higgs_train.evaluate.metrics import numeric
from higgs_train.files import atomic_path

MAX_BARS = 40


def plot_metrics(rows: list[dict], metrics: list[str], out_png) -> Path | None:
    """Returns the PNG written, or None when there is nothing numeric to draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    ok = [r for r in rows if r["status"] == "ok"]
    if not ok or not metrics:
        return None
    cols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        pts = [(r["id"], float(r[m])) for r in ok if numeric(r.get(m))]
        values = [v for _, v in pts]
        if len(pts) <= MAX_BARS:
            ax.bar(range(len(pts)), values, color="tab:blue")
            ax.set_xticks(range(len(pts)), [i for i, _ in pts], rotation=60, fontsize=7, ha="right")
        else:
            ax.hist(values, bins=20, color="tab:blue")
        if values:
            mean = sum(values) / len(values)
            draw = ax.axhline if len(pts) <= MAX_BARS else ax.axvline
            draw(mean, color="black", ls="--", lw=1, label=f"mean {mean:.3g}")
            ax.legend(fontsize=7)
        ax.set_title(m, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.tight_layout()
    out_png = Path(out_png)
    with atomic_path(out_png, keep_ext=True) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)
    return out_png
