"""What counts as a metric value in the result rows, and their means (harness tables and plots)."""
from __future__ import annotations

import math

import numpy as np


def numeric(v) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and math.isfinite(v)


def metric_means(rows: list[dict]) -> dict[str, float]:
    """Mean of every numeric column over the items that succeeded (NaN/inf left out)."""
    ok = [r for r in rows if r["status"] == "ok"]
    keys = [k for k in dict.fromkeys(k for r in ok for k in r) if any(numeric(r.get(k)) for r in ok)]
    return {k: round(float(np.mean([r[k] for r in ok if numeric(r.get(k))])), 4) for k in keys}
