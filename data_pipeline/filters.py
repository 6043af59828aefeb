"""Thresholds applied to scored segments: a separate step, so re-thresholding needs no recompute.

Every candidate segment keeps all its scores in its source record
(OUT/parts/<key>.json); `apply_filters` decides keep/reject from them alone.
Rerunning the same command with other thresholds (or
`python -m data_pipeline.merge output_dir=OUT filter.min.dnsmos_ovrl=2.5`)
only repacks the shards.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class FilterConfig:
    # score name -> floor (inclusive); configs/pipeline/filter/default.yaml's
    min: dict = field(default_factory=lambda: {"dnsmos_ovrl": 3.0, "asr_confidence": 0.68})
    max: dict = field(default_factory=dict)                           # score name -> ceiling (inclusive)
    min_chars: int = 2            # transcript length floor (only when a transcriber ran)
    rate_iqr_k: float | None = 1.5  # seconds-per-character fences Q1 - k*IQR .. Q3 + k*IQR per source; None: off
    rate_min_segments: int = 4    # fewer transcribed segments in a source than this: no fences


ASR_KEY_PREFIX = "asr_"     # scores a transcriber gives: no transcriber ran (transcribe=none), no bound on them


def _chars(text: str) -> int:
    return len("".join(text.split()))


def _bad(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def filter_source(segments: list[dict], cfg: FilterConfig, transcribed: bool) -> list[tuple[dict, str | None]]:
    """[(segment_row, None if kept else reason)] for one source's candidate segments, in order."""
    def bounds(limits: dict | None) -> dict:   # the ones that apply to this source
        return {k: v for k, v in (limits or {}).items() if transcribed or not k.startswith(ASR_KEY_PREFIX)}

    floors, ceils = bounds(cfg.min), bounds(cfg.max)
    out: list[tuple[dict, str | None]] = []
    for row in segments:
        q = row.get("quality") or {}
        reason = None
        for key, floor in floors.items():
            if _bad(q.get(key)):
                reason = f"missing_{key}"
            elif q[key] < floor:
                reason = f"low_{key}"
            if reason:
                break
        if reason is None:
            for key, ceil in ceils.items():
                if _bad(q.get(key)):
                    reason = f"missing_{key}"
                elif q[key] > ceil:
                    reason = f"high_{key}"
                if reason:
                    break
        if reason is None and transcribed and _chars(row.get("text", "")) < cfg.min_chars:
            reason = "text_too_short"
        out.append((row, reason))
    if transcribed and cfg.rate_iqr_k is not None:
        # Speech rate outliers betray a wrong transcript (hallucinated or missing words) or a bad cut.
        live = [(i, r["duration"] / _chars(r["text"])) for i, (r, why) in enumerate(out) if why is None]
        if len(live) >= cfg.rate_min_segments:
            q1, q3 = np.percentile([spc for _, spc in live], [25, 75])
            lo, hi = q1 - cfg.rate_iqr_k * (q3 - q1), q3 + cfg.rate_iqr_k * (q3 - q1)
            for i, spc in live:
                if not lo <= spc <= hi:
                    out[i] = (out[i][0], "speech_rate_outlier")
    return out
