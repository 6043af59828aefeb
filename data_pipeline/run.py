"""The curation run: list -> slice -> process every source (in parallel) -> finalize.

    python -m data_pipeline input_dir=IN output_dir=OUT [workers=N] [num_shards=N shard_index=I] [stage overrides]

Per source (one worker process each, models loaded once per worker), the config's `stages:` in
order, each `stage.run(src)` on one Source (data_pipeline/source.py) until one ends it; by default
    ingest (decode once: 16 kHz analysis copy in memory, 24 kHz copy in a temp file, sha1)
    -> vad -> diarization -> segment -> quality -> transcribe -> export part
The result of a source is OUT/parts/<key>.tar (its candidate segments' FLAC + rows) and
OUT/parts/<key>.json (its record: audio info, sha1, rejections, candidate rows with all
scores, timings). The .json, written last and renamed into place, marks the source done:
a rerun skips it (unless the processing config or the file itself changed: records carry the
input's size and mtime_ns), so a killed run resumes.

Retry rules (nothing good is lost to a passing fault):
- a transient error on a source (OSError such as disk full, MemoryError) leaves a record marked
  `retry`: the source is listed in rejected.jsonl as `transient_error` and processed again by the
  next run;
- a worker death is blamed on no one at first: every source in flight is retried alone, one at a
  time; only a source that ended `max_worker_crashes` such lone attempts without finishing (the
  count is kept in OUT/.attempts/, so a killed main process with workers=1 counts too) is
  rejected `worker_crashed`.

Modules: process.py runs one source through the stages, workers.py the pool (and the retry rules
above), records.py the output layout and records; this file lists, slices and drives the run.

Finalize (data_pipeline/merge.py) turns the records into manifest.jsonl, rejected.jsonl,
shards/ and report/: duplicates resolved, filters applied, kept segments packed. With
num_shards=N each slice only writes its parts; `python -m data_pipeline.merge` finalizes.
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path

from omegaconf import DictConfig

from data_pipeline.config import build_stage
from data_pipeline.process import (Context, build_stages, process_source,  # noqa: F401 (the run's API)
                                   processing_fingerprint)
from data_pipeline.records import ATTEMPTS, PARTS, SLICES, is_done, load_record, write_json  # noqa: F401
from data_pipeline.workers import _folder_record, run_sources
from higgs_train.audio import AudioError, audio_info

log = logging.getLogger("data_pipeline")


def slice_sources(sources: list[str], num_shards: int, shard_index: int) -> list[str]:
    """The shard_index-th of num_shards disjoint slices: every num_shards-th source of the sorted
    list (round robin spreads long and short files alike)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= shard_index ({shard_index}) < num_shards ({num_shards})")
    return sorted(sources)[shard_index::num_shards]


# ---------------------------------------------------------------- progress

class Progress:
    """Files done, hours of audio done, speed (x real time) and ETA (from the hours rate)."""

    def __init__(self, durations: list[tuple[str, float]], desc: str):
        n_files, seconds = len(durations), sum(d for _, d in durations)
        from tqdm import tqdm

        tty = sys.stderr.isatty()  # in a batch log, a line every 30 s rather than a redraw every 0.5 s
        self.bar = tqdm(total=round(seconds / 3600, 4), desc=desc, file=sys.stderr, dynamic_ncols=True,
                        mininterval=0.5 if tty else 30.0,
                        bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.3f}/{total:.3f} h audio "
                                   "[{elapsed}<{remaining}] {postfix}")
        self.n_files, self.done, self.seconds, self.t0 = n_files, 0, 0.0, time.perf_counter()
        self.durations = dict(durations)          # rel -> seconds, to turn a fraction into hours
        self.counted: dict[str, float] = {}       # rel -> seconds counted so far for sources under way
        self.lock = threading.Lock()              # partial() comes from a queue-draining thread
        self.bar.set_postfix_str(f"files 0/{n_files}", refresh=False)

    def partial(self, item: tuple[str, float]) -> None:
        """A source under way reports the fraction of its work done: the bar moves inside long files."""
        rel, fraction = item
        with self.lock:
            if rel not in self.durations:
                return
            seconds = fraction * self.durations[rel]
            delta = seconds - self.counted.get(rel, 0.0)
            if delta > 0:
                self.counted[rel] = seconds
                self._advance(delta)

    def update(self, summary: dict) -> None:
        with self.lock:
            self.done += 1
            self.seconds += summary["seconds"]
            # the header's duration, as in the total: the bar ends at its total whatever was decoded;
            # popped, so late partial reports are ignored
            planned = self.durations.pop(summary["source"], summary["seconds"])
            counted = self.counted.pop(summary["source"], 0.0)
            speed = self.seconds / max(time.perf_counter() - self.t0, 1e-9)
            self.bar.set_postfix_str(f"files {self.done}/{self.n_files}, {speed:.1f}x real time", refresh=False)
            self._advance(max(0.0, planned - counted))

    def _advance(self, seconds: float) -> None:
        """Move the bar by `seconds` of audio, never past its total (float rounding of many small steps)."""
        self.bar.update(min(round(seconds / 3600, 6), max(0.0, self.bar.total - self.bar.n)))

    def close(self) -> None:
        self.bar.close()


# ---------------------------------------------------------------- the run

def _clean_stale_temps() -> None:
    """Remove 24 kHz temp copies left by killed runs on this host (their process is gone)."""
    host = socket.gethostname()
    for p in Path(tempfile.gettempdir()).glob(f"curate24-*-{host}-*"):
        try:
            pid = int(p.name.split("-")[1])
            os.kill(pid, 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except (ValueError, IndexError, PermissionError, OSError):
            continue


def _exit_on_signal(signum, frame) -> None:
    raise SystemExit(128 + signum)


def curate(cfg: DictConfig) -> dict:
    """Run (or resume) a curation; returns the slice summary, plus the finalize summary if single."""
    from data_pipeline.merge import finalize, slice_path

    input_dir, out_dir = Path(cfg.input_dir).resolve(), Path(cfg.output_dir).resolve()
    if out_dir == input_dir:
        raise ValueError(f"output_dir is input_dir ({input_dir}): choose an output folder outside the inputs")
    if out_dir.is_relative_to(input_dir):
        log.info("output_dir %s is inside input_dir: it is left out of the inputs", out_dir)
    (out_dir / PARTS).mkdir(parents=True, exist_ok=True)
    (out_dir / SLICES).mkdir(parents=True, exist_ok=True)
    _clean_stale_temps()
    ingest = build_stage(cfg.ingest)
    unreadable: list[tuple[str, str]] = []
    files = ingest.list_sources(input_dir, exclude=out_dir, unreadable=unreadable)
    # A folder that cannot be listed is a source of its own (name ending in /), rejected with its reason.
    folders = {f"{rel}/": why for rel, why in unreadable}
    sources = slice_sources(files + sorted(folders), cfg.num_shards, cfg.shard_index)
    fp = processing_fingerprint(cfg)
    workers = max(1, int(cfg.workers))
    ctx = Context(input_dir, out_dir, fp)

    todo = []
    for rel in sources:
        if rel in folders:
            _folder_record(rel, folders[rel], ctx)
        elif not is_done(load_record(out_dir, rel), fp, input_dir, out_dir):
            try:
                seconds = audio_info(input_dir / rel).duration
            except AudioError:
                seconds = 0.0
            todo.append((rel, seconds))
    log.info("%d input files in slice %d/%d: %d done, %d to process (%.2f h)", len(sources), cfg.shard_index,
             cfg.num_shards, len(sources) - len(todo), len(todo), sum(s for _, s in todo) / 3600)
    t0 = time.perf_counter()
    if todo:
        bar = Progress(todo, desc=f"curate {cfg.shard_index}/{cfg.num_shards}")
        # SIGTERM (a scheduler's cancel) unwinds like Ctrl-C: workers killed, temp copies removed
        main = threading.current_thread() is threading.main_thread()
        old = signal.signal(signal.SIGTERM, _exit_on_signal) if main else None
        try:
            run_sources(todo, cfg, ctx, workers, bar.update, bar.partial, int(cfg.max_worker_crashes))
        finally:
            bar.close()
            if main:
                signal.signal(signal.SIGTERM, old)
    retry = [rel for rel in sources if (load_record(out_dir, rel) or {}).get("retry")]
    if retry:
        log.warning("%d sources failed with a transient error (disk full, out of memory; e.g. %s): they are "
                    "listed as transient_error and the same command processes them again", len(retry), retry[:3])
    wall = time.perf_counter() - t0
    slice_summary = {"num_shards": cfg.num_shards, "shard_index": cfg.shard_index, "fingerprint": fp,
                     "input_dir": str(input_dir), "sources": sources, "seconds": round(wall, 3)}
    write_json(slice_path(out_dir, cfg.num_shards, cfg.shard_index), slice_summary)
    if cfg.num_shards > 1:
        log.info("slice %d/%d done; when all slices are, run: python -m data_pipeline.merge output_dir=%s",
                 cfg.shard_index, cfg.num_shards, out_dir)
        return slice_summary
    return finalize(cfg, out_dir, sources, str(input_dir), wall if len(todo) == len(sources) else None)
