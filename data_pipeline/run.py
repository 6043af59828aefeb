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

Finalize (data_pipeline/merge.py) turns the records into manifest.jsonl, rejected.jsonl,
shards/ and report/: duplicates resolved, filters applied, kept segments packed. With
num_shards=N each slice only writes its parts; `python -m data_pipeline.merge` finalizes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import signal
import socket
import sys
import tempfile
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from data_pipeline.config import build_stage, register_resolvers
from data_pipeline.records import (ATTEMPTS, PARTS, SHA1_DIR, SLICES, identity, is_done, load_record, new_record,
                                   save_record, write_json)
from data_pipeline.source import Source
from data_pipeline.stages.ingest import source_key
from higgs_train.audio import AudioError, audio_info
from higgs_train.files import write_text_atomic

log = logging.getLogger("data_pipeline")

# Keys that say how a stage runs, not what it computes (up to float rounding): changing them
# (a bigger batch on a GPU machine, more threads) keeps finished sources.
EXECUTION_KEYS = ("batch_size", "threads", "device")
# The stage whose settings (shard size) act only when finalize packs the shards: changing them
# keeps finished sources. filter is no stage at all: it acts at finalize, on the stored records.
PACKING_STAGE = "export"
DEFAULT_COST = 0.05   # a stage's share of a source's time when its class does not say (`cost`)


def _without_execution_keys(node):
    if isinstance(node, dict):
        return {k: _without_execution_keys(v) for k, v in node.items() if k not in EXECUTION_KEYS}
    if isinstance(node, list):
        return [_without_execution_keys(v) for v in node]
    return node


def processing_fingerprint(cfg: DictConfig) -> str:
    """What a source's record depends on: the stage list and each stage's settings (execution keys,
    at any depth, and the packing settings aside). A change redoes the sources; a rerun with the
    same keeps them."""
    groups = {"stages": list(cfg.stages)}
    for g in cfg.stages:
        if g == PACKING_STAGE:
            continue
        node = OmegaConf.to_container(cfg[g], resolve=True) if cfg.get(g) is not None else None
        groups[g] = _without_execution_keys(node)
    return hashlib.sha1(json.dumps(groups, sort_keys=True).encode()).hexdigest()[:16]


def slice_sources(sources: list[str], num_shards: int, shard_index: int) -> list[str]:
    """The shard_index-th of num_shards disjoint slices: every num_shards-th source of the sorted
    list (round robin spreads long and short files alike)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"need 0 <= shard_index ({shard_index}) < num_shards ({num_shards})")
    return sorted(sources)[shard_index::num_shards]


# ---------------------------------------------------------------- the stages of one source

Stages = list  # [(name, stage)]: cfg.stages in order, each with run(src) (data_pipeline/source.py)


def build_stages(cfg: DictConfig, threads: int = 1) -> Stages:
    """cfg.stages, built in order; a stage whose config has no _target_ (transcribe=none) is left out."""
    out = []
    for name in cfg.stages:
        if name not in cfg:
            raise ValueError(f"stages lists {name!r}, but the config has no {name!r} key: add its config group "
                             f"(configs/pipeline/{name}/X.yaml, then +{name}=X) or +{name}._target_=module.Class")
        stage = build_stage(cfg[name], threads)
        if stage is not None:
            if not callable(getattr(stage, "run", None)):
                raise TypeError(f"stage {name!r} ({type(stage).__name__}) has no run(src) method "
                                "(the stage protocol: data_pipeline/source.py)")
            out.append((name, stage))
    return out


@dataclass
class Context:
    input_dir: Path
    out_dir: Path
    fingerprint: str
    threads: int
    # progress(rel, fraction) inside one source, so a multi-hour file moves the bar while it runs:
    # Progress.partial inline, a queue's put in worker processes (None: not reported)
    progress: Callable | None = None

    def report(self, rel: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress((rel, fraction))


def _claim_sha1(ctx: Context, sha1: str, key: str, rel: str) -> str | None:
    """Register this source's audio hash; return an earlier-sorting input with the same audio,
    if one has registered it (then this source is a duplicate and need not be processed).
    Finalize makes the same decision from the records, so a race here only costs time."""
    d = ctx.out_dir / SHA1_DIR / sha1
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / key, rel)
    others = []
    for p in d.iterdir():
        if p.name != key and not p.name.startswith("."):
            try:
                others.append(json.loads(p.read_text()))
            except (OSError, ValueError):
                continue
    earlier = sorted(o for o in others if o < rel and (ctx.input_dir / o).is_file())
    return earlier[0] if earlier else None


def process_source(rel: str, stages: Stages, ctx: Context) -> dict:
    """Run every stage on one source, in order, until one ends it; write its part and record.
    Never raises for bad input: whatever goes wrong becomes a rejection with a reason. Returns a
    small summary."""
    key = source_key(rel)
    parts = ctx.out_dir / PARTS
    old = load_record(ctx.out_dir, rel)
    transcribed = any(getattr(stage, "produces_text", False) for _, stage in stages)
    rec = new_record(rel, ctx.fingerprint, identity(ctx.input_dir / rel), transcribed=transcribed)

    def claim(sha1: str) -> str | None:
        if old and old.get("sha1") not in (None, sha1):  # a replaced input: drop its old audio's claim
            (ctx.out_dir / SHA1_DIR / old["sha1"] / key).unlink(missing_ok=True)
        return _claim_sha1(ctx, sha1, key, rel)

    src = Source(rel, ctx.input_dir / rel, rec, parts, claim)
    costs = [float(getattr(stage, "cost", DEFAULT_COST)) for _, stage in stages]
    total = sum(costs) or 1.0
    done = 0.0   # share of the source done before the running stage
    t = time.perf_counter()
    try:
        for (name, stage), cost in zip(stages, costs):
            src.stage = name
            src.progress = lambda f, lo=done, w=cost / total: ctx.report(rel, lo + w * min(max(f, 0.0), 1.0))
            stage.run(src)
            now = time.perf_counter()
            rec["timings"][name] = rec["timings"].get(name, 0.0) + now - t
            t, done = now, done + cost / total
            ctx.report(rel, done)
            if src.ended:
                break
    except Exception as e:  # a bug or a model failure on this input: reject the source, keep going
        # Disk full, out of memory, ...: not this file's fault; the next run processes it again.
        transient = isinstance(e, (OSError, MemoryError))
        log.warning("%s failed in stage %s%s:\n%s", rel, src.stage, " (retried on the next run)" if transient else "",
                    traceback.format_exc())
        rec["timings"][src.stage] = rec["timings"].get(src.stage, 0.0) + time.perf_counter() - t
        rec["segments"] = []
        first = stages[0][0] if stages else "ingest"
        rec["rejected"] = [r for r in rec["rejected"] if r["stage"] == first]
        detail = f"{type(e).__name__}: {e}"[:500]
        if transient:
            rec["retry"] = True
        src.end("transient_error" if transient else "error",
                f"{detail} (retried on the next run)" if transient else detail)
    finally:
        if src.audio is not None:
            src.audio.cleanup()
    return save_record(rec, parts)


# ---------------------------------------------------------------- workers

_WORKER: tuple[Stages, Context] | None = None


def _die_with_parent() -> None:
    """Have the kernel SIGKILL this worker when the process that started it dies, even by SIGKILL
    (Linux prctl PR_SET_PDEATHSIG); exit now if it already has. Elsewhere workers notice a dead
    parent only at their next task."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG
    parent = mp.parent_process()
    if parent is not None and os.getppid() != parent.pid:
        os._exit(1)


def _init_worker(cfg_yaml: str, ctx: Context) -> None:
    global _WORKER
    _die_with_parent()
    import torch

    torch.set_num_threads(ctx.threads)
    register_resolvers()
    _WORKER = (build_stages(OmegaConf.create(cfg_yaml), ctx.threads), ctx)


def _work(rel: str) -> dict:
    stages, ctx = _WORKER
    return process_source(rel, stages, ctx)


def _crash_record(rel: str, ctx: Context, crashes: int) -> dict:
    rec = new_record(rel, ctx.fingerprint, identity(ctx.input_dir / rel), rejected=[
        {"source": rel, "stage": "pipeline", "reason": "worker_crashed",
         "detail": f"the process died {crashes} times on this file alone (out of memory?)"}])
    summary = save_record(rec, ctx.out_dir / PARTS)
    _attempts_path(ctx, rel).unlink(missing_ok=True)
    return summary


def _folder_record(rel: str, reason: str, ctx: Context) -> None:
    """A folder under input_dir that could not be listed (rewritten by every run that meets it)."""
    save_record(new_record(rel, ctx.fingerprint, None, rejected=[
        {"source": rel, "stage": "ingest", "reason": "unreadable_folder", "detail": reason}]), ctx.out_dir / PARTS)


def _attempts_path(ctx: Context, rel: str) -> Path:
    return ctx.out_dir / ATTEMPTS / source_key(rel)


def _begin_alone(ctx: Context, rel: str, max_crashes: int) -> bool:
    """Count one lone attempt at `rel` (ended by _end_alone when it finishes, whatever its outcome);
    False when `max_crashes` earlier lone attempts never finished: the file kills its process."""
    p = _attempts_path(ctx, rel)
    try:
        n = int(p.read_text())
    except (OSError, ValueError):
        n = 0
    if n >= max_crashes:
        return False
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(p, str(n + 1))
    return True


def _end_alone(ctx: Context, rel: str) -> None:
    _attempts_path(ctx, rel).unlink(missing_ok=True)


def run_sources(todo: list[tuple[str, float]], cfg: DictConfig, ctx: Context, workers: int, on_done,
                on_partial: Callable | None = None, max_crashes: int = 2) -> None:
    """Process `todo` [(rel, seconds)] with `workers` processes (inline when 1), longest first.
    on_done(summary) after each source; on_partial((rel, fraction)) while one is under way.
    A source whose lone attempts killed their process max_crashes times is rejected worker_crashed."""
    todo = sorted(todo, key=lambda x: (-x[1], x[0]))
    if workers <= 1:
        import torch

        torch.set_num_threads(ctx.threads)
        stages = build_stages(cfg, ctx.threads)
        ctx = replace(ctx, progress=on_partial)
        for rel, _ in todo:  # every attempt here is alone: one that kills this process counts
            if not _begin_alone(ctx, rel, max_crashes):
                on_done(_crash_record(rel, ctx, max_crashes))
                continue
            try:
                summary = process_source(rel, stages, ctx)
            finally:  # done, or stopped by SIGINT/SIGTERM: either way the file did not kill us
                _end_alone(ctx, rel)
            on_done(summary)
        return
    cfg_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    pending = [rel for rel, _ in todo]
    suspects: list[str] = []  # in flight when a worker died: retried alone, one at a time
    while pending or suspects:
        inflight: dict = {}
        # Workers put (rel, fraction) on a queue that a thread here hands on; one queue per pool,
        # since a worker killed inside put() would leave the queue's lock held.
        queue = mp.get_context("spawn").SimpleQueue() if on_partial else None
        if queue is not None:
            threading.Thread(target=_drain, args=(queue, on_partial), daemon=True).start()
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(cfg_yaml, replace(ctx, progress=queue.put if queue else None)))
        broken = False
        try:
            while pending or suspects or inflight:
                if suspects:  # alone: a death now is this file's doing
                    if not inflight:
                        rel = suspects.pop(0)
                        if not _begin_alone(ctx, rel, max_crashes):
                            on_done(_crash_record(rel, ctx, max_crashes))
                            continue
                        inflight[pool.submit(_work, rel)] = rel
                else:
                    while pending and len(inflight) < workers:  # at most one source per worker in flight
                        rel = pending.pop(0)
                        inflight[pool.submit(_work, rel)] = rel
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                # finished results first: a broken one below must not discard them
                for f in sorted(done, key=lambda f: isinstance(f.exception(), BrokenProcessPool)):
                    rel = inflight.pop(f)
                    if isinstance(f.exception(), BrokenProcessPool):
                        inflight[f] = rel
                        raise BrokenProcessPool
                    on_done(f.result())
                    _end_alone(ctx, rel)
        except BrokenProcessPool:
            broken = True
            # A worker died (killed, out of memory, a crash in native code): the files in flight
            # are retried alone in a fresh pool, so only the file that kills a worker by itself
            # is ever rejected (its lone crashes counted by _begin_alone).
            log.warning("a worker process died; restarting the pool (in flight: %s)", sorted(inflight.values()))
            suspects[:0] = sorted(inflight.values())
        except BaseException:  # SIGINT, SIGTERM (curate turns it into SystemExit): stop the workers now,
            broken = True      # not after their files (the executor has no public call for this)
            for p in list((getattr(pool, "_processes", None) or {}).values()):
                p.kill()
            for rel in inflight.values():  # stopped, not crashed by their file
                _end_alone(ctx, rel)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
            if queue is not None and not broken:
                queue.put(None)  # every worker has exited: the lock is free; ends the thread


def _drain(queue, on_partial) -> None:
    while (item := queue.get()) is not None:
        on_partial(item)


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
    ingest = build_stage(cfg.ingest, 1)
    unreadable: list[tuple[str, str]] = []
    files = ingest.list_sources(input_dir, exclude=out_dir, unreadable=unreadable)
    # A folder that cannot be listed is a source of its own (name ending in /), rejected with its reason.
    folders = {f"{rel}/": why for rel, why in unreadable}
    sources = slice_sources(files + sorted(folders), cfg.num_shards, cfg.shard_index)
    fp = processing_fingerprint(cfg)
    workers = max(1, int(cfg.workers))
    ctx = Context(input_dir, out_dir, fp, threads=max(1, len(os.sched_getaffinity(0)) // workers))

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
