"""The worker pool of a curation run: processes that die with their parent, sources longest first,
and the retry rules for a worker's death (data_pipeline/run.py's docstring says them)."""
from __future__ import annotations

import logging
import multiprocessing as mp
import os
import signal
import sys
import threading
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from data_pipeline import cores
from data_pipeline.config import register_resolvers
from data_pipeline.process import Context, Stages, build_stages, process_source
from data_pipeline.records import ATTEMPTS, PARTS, identity, new_record, save_record
from data_pipeline.stages.ingest import source_key
from higgs_train.files import write_text_atomic

log = logging.getLogger("data_pipeline")

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


def _init_worker(cfg_yaml: str, ctx: Context, unfinished, workers: int) -> None:
    global _WORKER
    _die_with_parent()
    cores.join_pool(unfinished, workers)
    cores.follow()
    register_resolvers()
    _WORKER = (build_stages(OmegaConf.create(cfg_yaml)), ctx)


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


def _lone_attempts(ctx: Context, rel: str) -> int:
    """Lone attempts at `rel` counted and not ended (0 when none are on record)."""
    try:
        return int(_attempts_path(ctx, rel).read_text())
    except (OSError, ValueError):
        return 0


def _set_lone_attempts(ctx: Context, rel: str, n: int) -> None:
    p = _attempts_path(ctx, rel)
    if n <= 0:
        p.unlink(missing_ok=True)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(p, str(n))


def _begin_alone(ctx: Context, rel: str, max_crashes: int) -> bool:
    """Count one lone attempt at `rel` (ended by _end_alone when it finishes, whatever its outcome);
    False when `max_crashes` earlier lone attempts never finished: the file kills its process."""
    n = _lone_attempts(ctx, rel)
    if n >= max_crashes:
        return False
    _set_lone_attempts(ctx, rel, n + 1)
    return True


def _undo_attempt(ctx: Context, rel: str) -> None:
    """Take back the lone attempt _begin_alone counted for an attempt that never started."""
    _set_lone_attempts(ctx, rel, _lone_attempts(ctx, rel) - 1)


def _end_alone(ctx: Context, rel: str) -> None:
    _attempts_path(ctx, rel).unlink(missing_ok=True)


def run_sources(todo: list[tuple[str, float]], cfg: DictConfig, ctx: Context, workers: int, on_done,
                on_partial: Callable | None = None, max_crashes: int = 2) -> None:
    """Process `todo` [(rel, seconds)] with `workers` processes (inline when 1), longest first.
    on_done(summary) after each source; on_partial((rel, fraction)) while one is under way.
    A source whose lone attempts killed their process max_crashes times is rejected worker_crashed."""
    todo = sorted(todo, key=lambda x: (-x[1], x[0]))
    if workers <= 1:
        cores.follow()  # every core: this process is the only one at work
        stages = build_stages(cfg)
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
        # Sources not finished yet (it only goes down): how the workers share the cores (data_pipeline/cores.py).
        # Lock-free: only this process writes it, and a worker killed while reading a locked Value
        # would leave its lock held and this loop blocked at the next write.
        unfinished = mp.get_context("spawn").Value("i", len(pending) + len(suspects), lock=False)
        pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                   initargs=(cfg_yaml, replace(ctx, progress=queue.put if queue else None),
                                             unfinished, workers))
        broken = False
        try:
            while pending or suspects or inflight:
                # A file leaves its list only once submitted: submit() itself raises BrokenProcessPool
                # when a worker has just died, and the file must then still be waiting, not lost.
                if suspects:  # alone: a death now is this file's doing
                    if not inflight:
                        rel = suspects[0]
                        if not _begin_alone(ctx, rel, max_crashes):
                            suspects.pop(0)
                            on_done(_crash_record(rel, ctx, max_crashes))
                            continue
                        try:
                            inflight[pool.submit(_work, rel)] = rel
                        except BrokenProcessPool:   # the pool broke before this attempt began
                            _undo_attempt(ctx, rel)
                            raise
                        suspects.pop(0)
                else:
                    while pending and len(inflight) < workers:  # at most one source per worker in flight
                        inflight[pool.submit(_work, pending[0])] = pending[0]
                        pending.pop(0)
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                # finished results first: a broken one below must not discard them
                for f in sorted(done, key=lambda f: isinstance(f.exception(), BrokenProcessPool)):
                    rel = inflight.pop(f)
                    if isinstance(f.exception(), BrokenProcessPool):
                        inflight[f] = rel
                        raise BrokenProcessPool
                    on_done(f.result())
                    _end_alone(ctx, rel)
                unfinished.value = len(pending) + len(suspects) + len(inflight)
        except BrokenProcessPool:
            broken = True
            # A worker died (killed, out of memory, a crash in native code): the files in flight
            # are retried alone in a fresh pool, so only the file that kills a worker by itself
            # is ever rejected (its lone crashes counted by _begin_alone).
            log.warning("a worker process died; restarting the pool (in flight: %s)", sorted(inflight.values()))
            suspects[:0] = sorted(inflight.values())
        except BaseException:  # SIGINT, SIGTERM (curate turns it into SystemExit): stop the workers now,
            broken = True      # not after their files
            for rel in inflight.values():  # stopped, not crashed by their file
                _end_alone(ctx, rel)
            raise
        finally:
            if broken:  # kill what is left (the executor has no public call for this): a broken pool's
                # manager terminates the workers it knows and then joins them all, but CPython spawns
                # workers in submit(), and one spawned while the pool was breaking is never
                # terminated: the join, and shutdown below, would wait for it forever
                for p in list((getattr(pool, "_processes", None) or {}).values()):
                    p.kill()
            pool.shutdown(wait=True, cancel_futures=True)
            if queue is not None and not broken:
                queue.put(None)  # every worker has exited: the lock is free; ends the thread


def _drain(queue, on_partial) -> None:
    while (item := queue.get()) is not None:
        on_partial(item)
