"""The curation report: OUT/report/ with summary.json, PNG histograms, and index.html.

    write_report(out_dir, manifest_rows, rejected_rows, stats) -> Path of report/

index.html is for a curator deciding thresholds: the figures, the counts per
rejection reason, and a few playable example clips (small MP3s under report/clips/)
per rejection reason and per DNSMOS OVRL band, so a threshold can be judged by ear.

`stats` (from finalize in data_pipeline/merge.py; every key optional):
    input_seconds   total duration of the input audio (hours in); default: kept + rejected segments
    sources         number of input files
    timings         {stage: seconds}, summed over workers
    cpu_timings     {stage: CPU seconds}, summed over workers (every thread of a worker counts)
    wall_seconds    wall-clock time of the run (gives the real-time factor)
    input_dir       the input folder: a last resort to play a segment from its source
    thresholds      {quality key: minimum kept}, drawn on the quality histograms; each also gets its
                    distribution with what its filter removed (summary's `filters`, filters.png)
Any other key is copied into summary.json as given, and a given key wins
over the computed one of the same name. Rows: docs/design.md, "Curation output". Rejected segment
rows that carry `quality`, `duration` and `text` also show up in the quality histograms
and the OVRL band examples. Clip audio comes from the row's shard, else from
OUT/parts/<source key>.tar (where the pipeline keeps every candidate segment), else
from the source file.
"""
from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import jinja2
import numpy as np

from data_pipeline.records import PARTS
from higgs_train.files import atomic_dir, atomic_path, dumps

CLIPS_PER_GROUP = 3
CLIP_MAX_SECONDS = 15.0
CLIP_SR = 16_000
OVRL_BANDS = [("< 2.0", 0.0, 2.0), ("2.0–2.5", 2.0, 2.5), ("2.5–3.0", 2.5, 3.0), ("3.0–3.5", 3.0, 3.5),
              ("≥ 3.5", 3.5, 9.9)]  # DNSMOS OVRL (MOS 1..5)
FILTER_BINS = 20


def reason_key(row: dict) -> str:
    """"stage/reason", e.g. "filter/dnsmos_ovrl" (the same keys as the pipeline's own counts)."""
    return f"{row.get('stage', '')}/{row.get('reason', '') or 'unknown'}"


def _is_segment(row: dict) -> bool:
    return row.get("start") is not None and row.get("end") is not None


def _duration(row: dict) -> float:
    return float(row.get("duration") or (float(row["end"]) - float(row["start"])))


def _score_keys(rows: list[dict]) -> list[str]:
    """Every numeric score, in the order the rows carry them: the order of the metrics in the quality
    config (configs/pipeline/quality/dnsmos.yaml) and of the stages that score."""
    return list(dict.fromkeys(k for r in rows for k, v in (r.get("quality") or {}).items()
                              if isinstance(v, (int, float))))


def _quality(row: dict, key: str):
    v = (row.get("quality") or {}).get(key)
    return float(v) if isinstance(v, (int, float)) and np.isfinite(v) else None


# ---------------------------------------------------------------- summary

def filter_effects(manifest_rows: list[dict], rejected_rows: list[dict], thresholds: dict) -> dict:
    """Per thresholded score: what its filter (finalize's `filter/low_KEY`) removed (segments, hours,
    share of all candidate segments) and the distribution of every segment that has the score, split
    into kept, removed by this filter and removed for another reason."""
    seg_rej = [r for r in rejected_rows if _is_segment(r)]
    out = {}
    for key, thr in thresholds.items():
        here = f"filter/low_{key}"
        removed = [r for r in seg_rej if reason_key(r) == here]
        groups = {"kept": [_quality(r, key) for r in manifest_rows],
                  "removed": [_quality(r, key) for r in removed],
                  "removed_other": [_quality(r, key) for r in seg_rej if reason_key(r) != here]}
        groups = {g: [v for v in vals if v is not None] for g, vals in groups.items()}
        scored = sum(len(v) for v in groups.values())
        candidates = len(manifest_rows) + len(seg_rej)
        span = [v for vals in groups.values() for v in vals] + [float(thr)]
        lo, hi = min(span), max(span)
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, FILTER_BINS + 1)
        out[key] = {"threshold": thr, "removed_segments": len(removed),
                    "removed_hours": round(sum(_duration(r) for r in removed) / 3600, 4),
                    "removed_fraction": round(len(removed) / candidates, 4) if candidates else 0.0,
                    "scored_segments": scored,
                    "histogram": {"edges": [round(float(e), 4) for e in edges],
                                  **{g: np.histogram(v, edges)[0].tolist() for g, v in groups.items()}}}
    return out


def summarize(manifest_rows: list[dict], rejected_rows: list[dict], stats: dict) -> dict:
    kept_s = sum(_duration(r) for r in manifest_rows)
    seg_rej = [r for r in rejected_rows if _is_segment(r)]
    by_reason = Counter(reason_key(r) for r in rejected_rows)
    sec_by_reason = defaultdict(float)
    for r in seg_rej:
        sec_by_reason[reason_key(r)] += _duration(r)
    input_s = stats.get("input_seconds")
    if input_s is None:  # not given: the audio we know about
        input_s = kept_s + sum(_duration(r) for r in seg_rej)
    quality = {}
    for key in _score_keys(manifest_rows):
        vals = [v for v in (_quality(r, key) for r in manifest_rows) if v is not None]
        if vals:
            p10, p50, p90 = np.percentile(vals, [10, 50, 90])
            quality[key] = {"mean": round(float(np.mean(vals)), 3), "p10": round(float(p10), 3),
                            "p50": round(float(p50), 3), "p90": round(float(p90), 3)}
    wall = stats.get("wall_seconds")
    summary = {
        "hours_in": round(input_s / 3600, 4),
        "hours_kept": round(kept_s / 3600, 4),
        "kept_fraction": round(kept_s / input_s, 4) if input_s else 0.0,
        "segments_kept": len(manifest_rows),
        "segments_rejected": len(seg_rej),
        "files_rejected": len(rejected_rows) - len(seg_rej),
        "files_with_segments": len({r["source"] for r in manifest_rows}),
        "speakers": len({(r["source"], r.get("speaker")) for r in manifest_rows}),
        "rejected_by_reason": dict(by_reason.most_common()),
        "rejected_seconds_by_reason": {k: round(v, 2) for k, v in sorted(sec_by_reason.items())},
        "rejected_by_stage": dict(Counter(str(r.get("stage", "")) for r in rejected_rows).most_common()),
        "sources": None,
        "timings": {},
        **_cores(stats),
        "real_time_factor": round(input_s / wall, 2) if wall else None,
        "quality": quality,
        "thresholds": {},
    }
    summary.update({k: v for k, v in stats.items() if k not in ("input_dir", "input_seconds")})
    summary.setdefault("filters", filter_effects(manifest_rows, rejected_rows, summary["thresholds"]))
    return summary


def _cores(stats: dict) -> dict:
    """stage_cores {stage: CPU seconds / seconds}: the cores a worker kept busy in that stage (2.0: two
    threads at work the whole time); cores_busy: the stages' CPU seconds over the run's wall seconds, of
    `cores` on this machine. A run that leaves cores idle (one long file, one worker at work on
    one thread) shows cores_busy well under cores."""
    timings, cpu, wall = stats.get("timings") or {}, stats.get("cpu_timings") or {}, stats.get("wall_seconds")
    return {"stage_cores": {k: round(v / timings[k], 2) for k, v in cpu.items() if timings.get(k)},
            "cores_busy": round(sum(cpu.values()) / wall, 2) if cpu and wall else None,
            "cores": len(os.sched_getaffinity(0))}


# ---------------------------------------------------------------- figures

def _plots(report: Path, manifest_rows: list[dict], rejected_rows: list[dict], summary: dict) -> list[tuple]:
    """Writes the PNGs; returns [(file name, caption)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    figs = []
    seg_rej = [r for r in rejected_rows if _is_segment(r)]

    fig, ax = plt.subplots(figsize=(7, 3.5))
    kept_d = [_duration(r) for r in manifest_rows]
    rej_d = [_duration(r) for r in seg_rej]
    top = max(kept_d + rej_d + [1.0])
    bins = np.linspace(0, top * 1.02, 40)
    ax.hist([kept_d, rej_d], bins=bins, stacked=True, color=["tab:green", "tab:red"],
            label=[f"kept ({len(kept_d)})", f"rejected ({len(rej_d)})"])
    ax.set(xlabel="segment duration (s)", ylabel="segments", title="Segment durations")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    figs.append(("durations.png", "Segment durations, kept and rejected", fig))

    keys = _score_keys(manifest_rows + seg_rej)
    if keys:
        cols = min(3, len(keys))
        rows = (len(keys) + cols - 1) // cols
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for ax, key in zip(axes.flat, keys):
            kept = [v for v in (_quality(r, key) for r in manifest_rows) if v is not None]
            rej = [v for v in (_quality(r, key) for r in seg_rej) if v is not None]
            both = kept + rej
            if not both:  # only non-finite values
                ax.axis("off")
                continue
            lo, hi = min(both), max(both)
            pad = (hi - lo) * 0.02 or max(abs(lo) * 0.05, 0.5)  # a constant score still gets a visible bar
            bins = np.linspace(lo - pad, hi + pad, 30)
            ax.hist([kept, rej], bins=bins, stacked=True, color=["tab:green", "tab:red"], label=["kept", "rejected"])
            thr = summary["thresholds"].get(key)
            if thr is not None:
                ax.axvline(float(thr), color="black", ls="--", lw=1, label=f"threshold {thr}")
            ax.set(title=key, ylabel="segments")
            ax.ticklabel_format(axis="x", useOffset=False, style="plain")
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=7)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle("Quality scores")
        figs.append(("quality.png", "Quality scores per segment (DNSMOS P.835, SNR, clipping, bandwidth, loudness)",
                     fig))

    filters = summary.get("filters") or {}
    if filters:
        fig, axes = plt.subplots(1, len(filters), figsize=(4.6 * len(filters), 3.2), squeeze=False)
        for ax, (key, f) in zip(axes.flat, filters.items()):
            h = f["histogram"]
            edges = np.array(h["edges"])
            bottom = np.zeros(len(edges) - 1)
            for g, color, label in (("kept", "tab:green", "kept"), ("removed", "tab:red", "removed by this filter"),
                                    ("removed_other", "tab:gray", "removed for another reason")):
                counts = np.array(h[g])
                ax.bar(edges[:-1], counts, width=np.diff(edges), bottom=bottom, align="edge", color=color,
                       label=f"{label} ({int(counts.sum())})")
                bottom += counts
            ax.axvline(float(f["threshold"]), color="black", ls="--", lw=1, label=f"threshold {f['threshold']}")
            n = f["removed_segments"]
            ax.set(title=f"{key} ≥ {f['threshold']}: removed {n} segment{'' if n == 1 else 's'}, "
                         f"{f['removed_hours'] * 3600:.0f} s", xlabel=key, ylabel="segments")
            ax.title.set_fontsize(8)
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.legend(fontsize=7)
        fig.suptitle("What each score filter removed")
        figs.append(("filters.png", "Distribution of each thresholded score (ASR confidence, DNSMOS OVRL, ...): "
                                    "kept, removed by its filter, removed for another reason (a segment under "
                                    "several floors counts for the first in filter.min's order)", fig))

    per_source = Counter()
    speakers = defaultdict(set)
    for r in manifest_rows:
        speakers[r["source"]].add(r.get("speaker"))
    per_source.update(len(s) for s in speakers.values())
    fig, ax = plt.subplots(figsize=(6, 3.2))
    if per_source:
        xs = sorted(per_source)
        ax.bar(xs, [per_source[x] for x in xs], color="tab:blue")
        ax.set_xticks(xs)
    ax.set(xlabel="speakers kept in the source", ylabel="sources", title="Speakers per source")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    figs.append(("speakers.png", "Speakers (with kept segments) per source", fig))

    reasons = summary["rejected_by_reason"]
    if reasons:
        fig, ax = plt.subplots(figsize=(7, 0.45 * len(reasons) + 1.2))
        names = list(reasons)[::-1]
        ax.barh([n[:50] for n in names], [reasons[n] for n in names], color="tab:red")
        ax.set(xlabel="rejected rows", title="Rejections per reason")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        figs.append(("reasons.png", "Rejections per reason (files and segments)", fig))

    out = []
    for name, caption, fig in figs:
        fig.tight_layout()
        fig.savefig(report / name, dpi=90)
        plt.close(fig)
        out.append((name, caption))
    return out


# ---------------------------------------------------------------- example clips

def _spread(rows: list[dict], n: int) -> list[dict]:
    """n rows evenly spread over the list sorted by (source, start): deterministic, varied."""
    rows = sorted(rows, key=lambda r: (str(r.get("source")), float(r.get("start") or 0)))
    if len(rows) <= n:
        return rows
    return [rows[int(i)] for i in np.linspace(0, len(rows) - 1, n).round()]


def _from_tar(tar_path: Path, key: str) -> np.ndarray | None:
    """KEY.flac of a shard or part tar at CLIP_SR, at most CLIP_MAX_SECONDS; None if absent."""
    from higgs_train.shards import decode_flac

    import soxr

    if not tar_path.is_file():
        return None
    try:
        with tarfile.open(tar_path) as tar:
            wav, sr = decode_flac(tar.extractfile(f"{key}.flac").read())
    except (KeyError, OSError, tarfile.TarError, RuntimeError):
        return None
    return soxr.resample(wav[:int(CLIP_MAX_SECONDS * sr)], sr, CLIP_SR).astype(np.float32)


def _clip_audio(row: dict, out_dir: Path, input_dir: Path | None) -> np.ndarray | None:
    """The segment's audio: from its shard, else its source's part file, else the source itself."""
    from higgs_train.audio import AudioError, load_segment

    key = row.get("id")
    if key and row.get("shard"):
        wav = _from_tar(out_dir / row["shard"], key)
        if wav is not None:
            return wav
    if key and "_" in key:  # ids are <source key>_<index>; the part file holds every candidate segment
        wav = _from_tar(out_dir / PARTS / f"{key.rsplit('_', 1)[0]}.tar", key)
        if wav is not None:
            return wav
    src = Path(str(row.get("source", "")))
    if not src.is_absolute() and input_dir is not None:
        src = input_dir / src
    if not src.is_file():
        return None
    start = float(row["start"])
    try:
        return load_segment(src, start, min(float(row["end"]), start + CLIP_MAX_SECONDS), CLIP_SR)
    except (AudioError, OSError, RuntimeError, ValueError):
        return None


def _write_clip(wav: np.ndarray, path: Path) -> bool:
    import soundfile as sf

    if wav is None or len(wav) < CLIP_SR // 10:
        return False
    # Encoded in memory, written by Python: a full disk raises OSError naming the path and errno,
    # where libsndfile says only "System error."
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1, 1), CLIP_SR, format="MP3")
    with atomic_path(path) as tmp:
        try:
            tmp.write_bytes(buf.getvalue())
        except OSError as e:  # a failed write() names no file
            raise OSError(e.errno, e.strerror, str(tmp)) from None
    return True


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "x"


def _examples(report: Path, out_dir: Path, groups: dict[str, list[dict]], input_dir: Path | None,
              prefix: str) -> dict[str, list[tuple[dict, str | None]]]:
    """{group: [(row, clip file relative to report/ or None)]}."""
    clips = report / "clips"
    clips.mkdir(exist_ok=True)
    out = {}
    for gi, (g, rows) in enumerate(groups.items()):
        items = []
        for i, row in enumerate(_spread(rows, CLIPS_PER_GROUP)):
            name = f"{prefix}{gi:02d}-{_slug(g)}-{i}.mp3"  # index first: slugs of two groups may collide
            ok = _write_clip(_clip_audio(row, out_dir, input_dir), clips / name)
            items.append((row, f"clips/{name}" if ok else None))
        out[g] = items
    return out


# ---------------------------------------------------------------- html

def _html(summary: dict, figs: list[tuple], reason_ex: dict, band_ex: dict, band_counts: dict,
          file_rejects: list[dict]) -> str:
    env = jinja2.Environment(loader=jinja2.PackageLoader("data_pipeline"), autoescape=True, trim_blocks=True,
                             lstrip_blocks=True)
    return env.get_template("report.html").render(s=summary, figs=figs, reason_ex=reason_ex, band_ex=band_ex,
                                                  band_counts=band_counts, file_rejects=file_rejects)


# ---------------------------------------------------------------- entry point

def write_report(out_dir, manifest_rows: list[dict], rejected_rows: list[dict], stats: dict) -> Path:
    """Write OUT/report/ (replacing an older one whole: built in a temp folder, then renamed)."""
    out_dir = Path(out_dir)
    final = out_dir / "report"
    with atomic_dir(final) as tmp:   # disk full, ...: no half-written report folder left behind
        _fill(tmp, out_dir, manifest_rows, rejected_rows, stats)
    return final


def _fill(tmp: Path, out_dir: Path, manifest_rows: list[dict], rejected_rows: list[dict], stats: dict) -> None:
    input_dir = Path(stats["input_dir"]) if stats.get("input_dir") else None

    summary = summarize(manifest_rows, rejected_rows, stats)
    (tmp / "summary.json").write_text(dumps(summary, indent=1) + "\n")
    figs = _plots(tmp, manifest_rows, rejected_rows, summary)

    seg_rej = [r for r in rejected_rows if _is_segment(r)]
    by_reason = defaultdict(list)
    for r in seg_rej:
        by_reason[reason_key(r)].append(r)
    reason_ex = _examples(tmp, out_dir, dict(sorted(by_reason.items())), input_dir, "rejected")

    by_band = {name: [] for name, _, _ in OVRL_BANDS}
    for r in manifest_rows + seg_rej:
        v = _quality(r, "dnsmos_ovrl")
        for name, lo, hi in OVRL_BANDS:
            if v is not None and lo <= v < hi:
                by_band[name].append(r)
    band_ex = _examples(tmp, out_dir, by_band, input_dir, "ovrl")
    band_counts = {k: len(v) for k, v in by_band.items()}

    file_rejects = [r for r in rejected_rows if not _is_segment(r)]
    # errors=: a file name that is not UTF-8 shows as caf\xe9.wav
    (tmp / "index.html").write_text(_html(summary, figs, reason_ex, band_ex, band_counts, file_rejects),
                                    errors="backslashreplace")
