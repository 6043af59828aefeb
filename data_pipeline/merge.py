"""Finalize: per-source records -> manifest.jsonl, rejected.jsonl, shards/, report/.

    python -m data_pipeline.merge output_dir=OUT [filter.* / export.* overrides]

A single run (num_shards=1) calls `finalize` itself. With num_shards=N, each slice
leaves its records in OUT/parts/ and OUT/slices/slice-IIIII-of-NNNNN.json; this
command (the dependent job of slurm/curate.sbatch) finalizes once all N are there.
Finalize reads only the stored records, so its output is the same whether the
records came from one run, N slices or a resumed run; rerun it with other
filter thresholds to re-threshold without recomputing anything.

Steps: duplicates resolved (per sha1 of the decoded audio the first source in
path order is kept; others are rejected `duplicate`), filters applied
(data_pipeline/filters.py), kept segments packed into shards (byte copies from
the parts), manifest and rejected written (temp name, then rename), report.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from data_pipeline.config import build_stage, config_args
from data_pipeline.filters import FilterConfig, filter_source
from data_pipeline.records import PARTS, SLICES, load_record
from data_pipeline.report import write_report
from data_pipeline.stages.export import read_part
from higgs_train.files import atomic_path, dumps, write_text_atomic

log = logging.getLogger("data_pipeline")

PACK_STATE = ".pack.json"


def slice_path(out_dir: Path, num_shards: int, shard_index: int) -> Path:
    return Path(out_dir) / SLICES / f"slice-{shard_index:05d}-of-{num_shards:05d}.json"


def complete_slices(out_dir: Path) -> tuple[list[str], str]:
    """(sources, input_dir) of the most recent complete set of slices (all N of some num_shards=N)."""
    sets: dict[int, dict[int, Path]] = {}
    for p in (Path(out_dir) / SLICES).glob("slice-*-of-*.json"):
        i, n = p.stem.split("-")[1], p.stem.split("-")[3]
        sets.setdefault(int(n), {})[int(i)] = p
    full = {n: s for n, s in sets.items() if len(s) == n}
    if not full:
        got = ", ".join(f"{len(s)}/{n}" for n, s in sorted(sets.items())) or "none"
        raise RuntimeError(f"no complete set of slices in {Path(out_dir) / SLICES} (finished: {got}); "
                           "run every shard_index of `python -m data_pipeline ... num_shards=N` first")
    n = max(full, key=lambda n: max(p.stat().st_mtime for p in full[n].values()))
    slices = [json.loads(full[n][i].read_text()) for i in range(n)]
    if len({s["fingerprint"] for s in slices}) > 1:
        raise RuntimeError("the slices were run with different processing configs; rerun the stale ones")
    return sorted(rel for s in slices for rel in s["sources"]), slices[0]["input_dir"]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    with atomic_path(path) as tmp:
        _write_rows(tmp, rows)


def _write_rows(path: Path, rows: list[dict]) -> None:
    with open(path, "w") as f:
        for r in rows:
            f.write(dumps(r) + "\n")


def _jsonl_tmp(path: Path, rows: list[dict]) -> Path:
    """`rows` written whole to a temp name beside `path` (returned; the caller renames it)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")   # atomic_path's name, renamed by the caller
    try:
        _write_rows(tmp, rows)
    except BaseException:  # disk full, a row that is not JSON: no temp file left behind
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _seg_reject(row: dict, stage: str, reason: str) -> dict:
    """A filtered segment keeps its scores and text, so the report can place it on the histograms."""
    return {"source": row["source"], "stage": stage, "reason": reason, "start": row["start"], "end": row["end"],
            "speaker": row["speaker"], "id": row["id"], "duration": row["duration"], "text": row["text"],
            "quality": row["quality"]}


def decide(records: list[dict], fcfg: FilterConfig) -> tuple[list[dict], list[dict]]:
    """(kept candidate rows, rejected rows), both in source order."""
    first_by_sha: dict[str, str] = {}
    for r in records:
        if r["sha1"]:
            first_by_sha.setdefault(r["sha1"], r["source"])
    kept, rejected = [], []
    for r in records:
        orig = first_by_sha.get(r["sha1"]) if r["sha1"] else None
        if orig is not None and orig != r["source"]:
            rejected.append({"source": r["source"], "stage": "ingest", "reason": "duplicate",
                             "detail": f"same audio as {orig}"})
            continue
        mine = list(r["rejected"])
        for row, why in filter_source(r["segments"], fcfg, r["transcribed"]):
            if why is None:
                kept.append(row)
            else:
                mine.append(_seg_reject(row, "filter", why))
        rejected += sorted(mine, key=lambda x: (x.get("start", -1.0), x.get("end", -1.0)))
    return kept, rejected


def run_stats(records: list[dict], rejected: list[dict], fcfg: FilterConfig, input_dir: str | None,
              wall_seconds: float | None, finalize_seconds: float) -> dict:
    """What data_pipeline.report needs besides the rows (see its docstring)."""
    dup = {r["source"] for r in rejected if r["reason"] == "duplicate" and "start" not in r}
    timings: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for r in records:
        for k, v in r["timings"].items():
            timings[k] = timings.get(k, 0.0) + v
        for k, v in r.get("cpu_timings", {}).items():  # absent from records of older runs
            cpu[k] = cpu.get(k, 0.0) + v
    timings["finalize"] = finalize_seconds
    return {"input_seconds": sum(r["audio"]["duration"] for r in records if r["audio"] and r["source"] not in dup),
            "sources": len(records), "wall_seconds": wall_seconds,
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "cpu_timings": {k: round(v, 3) for k, v in cpu.items()}, "input_dir": input_dir,
            "thresholds": dict(fcfg.min or {})}


def finalize(cfg: DictConfig, out_dir, sources: list[str], input_dir: str | None = None,
             wall_seconds: float | None = None) -> dict:
    """Write manifest, rejected, shards and report from the records of `sources`; returns the report
    summary. input_dir lets the report play rejected segments from their source; wall_seconds (the
    run's, when it processed every source) gives it the real-time factor."""
    out_dir = Path(out_dir)
    t0 = time.perf_counter()
    records, missing = [], []
    for rel in sorted(sources):
        rec = load_record(out_dir, rel)
        (missing.append(rel) if rec is None else records.append(rec))
    if missing:
        raise RuntimeError(f"{len(missing)} sources have no record in {out_dir / PARTS} "
                           f"(e.g. {missing[:3]}); rerun the curation for them")
    fcfg = FilterConfig(**OmegaConf.to_container(cfg.filter, resolve=True))
    export = build_stage(cfg.export)
    state = hashlib.sha1(json.dumps({
        "records": [(r["source"], r["fingerprint"], r["sha1"]) for r in records],
        "filter": OmegaConf.to_container(cfg.filter, resolve=True),
        "export": OmegaConf.to_container(cfg.export, resolve=True)}, sort_keys=True).encode()).hexdigest()
    state_path = out_dir / PACK_STATE
    summary_path = out_dir / "report" / "summary.json"
    if (state_path.is_file() and state_path.read_text() == state and summary_path.is_file()
            and (out_dir / "manifest.jsonl").is_file()):
        log.info("manifest, shards and report are up to date")
        summary = json.loads(summary_path.read_text())
    else:
        state_path.unlink(missing_ok=True)
        kept, rejected = decide(records, fcfg)
        keep = {row["id"]: row for row in kept}
        by_source: dict[str, list[dict]] = {}
        for row in kept:
            by_source.setdefault(row["source"], []).append(row)

        def samples():
            for r in records:
                if r["source"] in by_source:
                    for seg_id, flac, _ in read_part(out_dir / PARTS / f"{r['key']}.tar"):
                        if seg_id in keep:
                            yield seg_id, flac, keep[seg_id]

        new = out_dir / ".shards.new"
        manifest = list(export.pack(samples(), new, prefix="shards/"))
        if len(manifest) != len(kept):
            raise RuntimeError(f"{len(kept) - len(manifest)} kept segments are missing from their part files "
                               f"in {out_dir / PARTS}: delete the affected parts/*.json and rerun")
        # Manifest and rejected written whole before the shards are swapped in, then renamed right
        # after: new shards sit beside the old manifest only between two renames.
        tmps = [_jsonl_tmp(out_dir / "manifest.jsonl", manifest), _jsonl_tmp(out_dir / "rejected.jsonl", rejected)]
        old = out_dir / ".shards.old"
        shutil.rmtree(old, ignore_errors=True)
        if (out_dir / "shards").exists():
            os.replace(out_dir / "shards", old)
        os.replace(new, out_dir / "shards")
        for tmp, name in zip(tmps, ("manifest.jsonl", "rejected.jsonl")):
            os.replace(tmp, out_dir / name)
        shutil.rmtree(old, ignore_errors=True)
        pack_s = time.perf_counter() - t0
        stats = run_stats(records, rejected, fcfg, input_dir, wall_seconds and wall_seconds + pack_s, pack_s)
        summary = json.loads((write_report(out_dir, manifest, rejected, stats) / "summary.json").read_text())
        write_text_atomic(state_path, state)
    if cfg.get("tokenizer"):
        from data_pipeline.tokenize import tokenize_shards

        tokenize_shards(out_dir / "shards", cfg.tokenizer)
    log.info("kept %d segments (%.2f h of %.2f h in): %s, report: %s", summary["segments_kept"],
             summary["hours_kept"], summary["hours_in"], out_dir / "manifest.jsonl", out_dir / "report/index.html")
    return summary


def main() -> None:
    import hydra

    from data_pipeline.config import CONFIG_DIR

    sys.argv[1:] = config_args(sys.argv[1:])

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="curate")
    def _main(cfg: DictConfig) -> None:
        out = Path(cfg.output_dir).resolve()
        sources, input_dir = complete_slices(out)
        finalize(cfg, out, sources, input_dir)

    _main()


if __name__ == "__main__":
    main()
