"""One worker thread owns the engine; concurrent requests queue up and are decoded in batches.

    b = Batcher(engine, max_batch=8, wait_s=0.02); b.start()
    fut = b.submit(request)            # concurrent.futures.Future[Result]; fut.cancel() abandons it
    for chunk in b.stream(request, reasons): ...  # float32 chunks; stops generating if the consumer
                                                  # leaves; `reasons` (a list) gets each text chunk's stop reason

Non-streaming requests waiting together (up to max_batch, arriving within wait_s of the first)
are generated as one batch; if the batch fails, each is retried alone so one bad request cannot
fail its neighbours. A streaming request runs alone (its chunks go out as they are decoded).
A cancelled future (its client went away) is dropped before its batch starts, and a batch whose
every future is cancelled stops at the next decode step, so the engine moves on to live requests.
"""
from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Iterator

from inference.engine import Engine, Request

log = logging.getLogger(__name__)
_END = object()


class _Abandoned(Exception):
    """Every request of the running batch was cancelled."""


def _settle(future: Future, result=None, error: BaseException | None = None) -> None:
    try:   # a future cancelled meanwhile takes no result
        future.set_exception(error) if error is not None else future.set_result(result)
    except InvalidStateError:
        pass


@dataclass
class _Job:
    request: Request
    future: Future = field(default_factory=Future)
    chunks: queue.Queue | None = None         # streaming jobs: chunks, then _END or an exception
    cancelled: threading.Event = field(default_factory=threading.Event)
    stop_reasons: list | None = None          # streaming jobs: filled by Engine.stream


class Batcher:
    def __init__(self, engine: Engine, max_batch: int = 8, wait_s: float = 0.02):
        self.engine, self.max_batch, self.wait_s = engine, max_batch, wait_s
        self.jobs: queue.Queue[_Job | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="inference-batcher", daemon=True)
        self.pending: list[_Job] = []

    def start(self) -> "Batcher":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.jobs.put(None)
        self.thread.join(timeout=30)

    @property
    def queued(self) -> int:
        return self.jobs.qsize() + len(self.pending)

    def submit(self, request: Request) -> Future:
        job = _Job(request)
        self.jobs.put(job)
        return job.future

    def stream(self, request: Request, stop_reasons: list | None = None) -> Iterator:
        job = _Job(request, chunks=queue.Queue(), stop_reasons=stop_reasons)
        self.jobs.put(job)
        try:
            while (item := job.chunks.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            job.cancelled.set()

    # ---- worker ----------------------------------------------------------------------------
    def _next(self, timeout: float | None) -> _Job | None:
        if self.pending:
            return self.pending.pop(0)
        return self.jobs.get(timeout=timeout) if timeout is not None else self.jobs.get()

    def _run(self) -> None:
        while True:
            job = self._next(None)
            if job is None:
                return
            if job.chunks is not None:
                self._stream(job)
                continue
            batch = [job]
            while len(batch) < self.max_batch:
                try:
                    nxt = self._next(self.wait_s)
                except queue.Empty:
                    break
                if nxt is None:
                    self.jobs.put(None)   # stop after this batch
                    break
                (self.pending.append if nxt.chunks is not None else batch.append)(nxt)
                if nxt.chunks is not None:
                    break
            self._generate(batch)

    def _generate(self, batch: list[_Job]) -> None:
        batch = [j for j in batch if not j.future.cancelled()]
        if not batch:
            return

        def abandoned(_steps: int) -> None:   # called by the engine after every decode step
            if all(j.future.cancelled() for j in batch):
                raise _Abandoned

        try:
            results = self.engine.generate([j.request for j in batch], progress=abandoned)
        except _Abandoned:
            log.info("generation of %d request(s) stopped: every client went away", len(batch))
            return
        except Exception as e:  # noqa: BLE001 - reported to the caller(s), the worker lives on
            if len(batch) == 1:
                _settle(batch[0].future, error=e)
                return
            for j in batch:
                self._generate([j])
            return
        for j, r in zip(batch, results):
            _settle(j.future, r)

    def _stream(self, job: _Job) -> None:
        try:
            for chunk in self.engine.stream(job.request, job.stop_reasons):
                if job.cancelled.is_set():
                    break
                job.chunks.put(chunk)
            job.chunks.put(_END)
        except Exception as e:  # noqa: BLE001
            job.chunks.put(e)
