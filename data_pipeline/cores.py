"""How many threads a curation worker may run now: the machine's cores shared among the sources
still under way. While every worker has a source, each gets cores // workers; when fewer sources
remain than workers (the tail of a run, or one long recording), the busy ones share the idle
workers' cores too, so no core waits while a long file is scored on one thread.

The pool's parent (data_pipeline/workers.py) keeps the number of sources not yet finished in a
shared integer. It only goes down, and at most that many workers are busy, so
busy workers x share() <= cores holds at every instant: a worker that reads a stale count takes
fewer threads than it may, never more. Outside a pool (workers=1, tests, evaluation) the share
is every core.

Stages ask at run time: torch's intra-op threads follow share() at each stage (follow(), from
data_pipeline/process.py), and the heavy loops run whole calls side by side, share() at once
(side_by_side(): DNSMOS's batches when its `threads` is 0, the diarization encoder's batches)."""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator

# A worker's torch threads meet at a barrier after every small op (the diarization encoder's LSTM
# steps). OpenMP's default spins there; with another process on the second core, a 2-thread
# diarization ran 20-40x slower than on one thread (benchmarks/README.md). Asleep they cost a wake-up
# each. libgomp reads this when torch loads: curation processes import this module before any stage.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

_POOL: tuple[object, int] | None = None  # (shared count of unfinished sources, workers) in a pool worker
_THREADS: ThreadPoolExecutor | None = None


def cores() -> int:
    return len(os.sched_getaffinity(0))


def join_pool(unfinished, workers: int) -> None:
    """In a pool worker: share the cores by `unfinished` (a multiprocessing Value the parent counts
    down) among at most `workers`."""
    global _POOL
    _POOL = (unfinished, workers)


def share() -> int:
    """Threads this process may use now (at least 1)."""
    if _POOL is None:
        return cores()
    unfinished, workers = _POOL
    return max(1, cores() // max(1, min(workers, unfinished.value)))


def follow() -> int:
    """Set torch's intra-op threads to share() (a cheap call when unchanged); returns it."""
    import torch

    n = share()
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def side_by_side(fn: Callable, items: Iterable) -> Iterator:
    """fn(item) for every item, in order, up to share() calls at once on this process's threads
    (for calls that release the GIL: onnxruntime runs, torch ops on one thread each). The thread
    that iterates prepares the next item meanwhile; it counts as one of them, so at most share()
    are at work. Whole calls side by side cost the CPU of one thread each, where one call's
    intra-op threads cost ~14 % more for DNSMOS and wait on each other (benchmarks/README.md)."""
    global _THREADS
    if _THREADS is None:
        _THREADS = ThreadPoolExecutor(cores(), thread_name_prefix="side-by-side")
    pending: deque = deque()
    for item in items:
        pending.append(_THREADS.submit(fn, item))
        while len(pending) >= share():
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()
