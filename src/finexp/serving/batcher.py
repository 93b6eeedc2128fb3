"""Dynamic micro-batching: the rows of concurrent requests scored together in one model call.

A request's rows join a queue; one worker task on the event loop takes the oldest waiting request, adds the next
ones while they fit in ``max_batch_size`` rows, and waits for more at most until the oldest has been queued
``max_wait_s`` (a full batch, or one gathered while the model was busy, goes at once). It then runs the scorer once,
in a thread, on all the rows, and hands every request its own slice of the answers. ``max_batch_size=1`` scores one
request at a time in arrival order, as finexp-serve did before batching (the benchmark's sequential mode).

Failures stay with the request that caused them: rows are validated per row by the scorer (a bad row gets an
``error`` in its place), and should a whole model call raise, each of its requests is scored again alone, so only
the one at fault fails. A request whose deadline passes leaves the queue without reaching the model; one whose batch
overruns it is answered at once while the batch finishes (a thread cannot be stopped).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("finexp")

Rows = list[dict[str, Any]]
Scorer = Callable[[Rows], Rows]
BatchObserver = Callable[[int, int, list[float], float], None]  # rows, requests, queue waits, model seconds


class BatcherClosed(Exception):
    """The server is shutting down: no new request is queued."""


@dataclass
class _Pending:
    rows: Rows
    future: asyncio.Future
    queued: float  # loop.time() when it joined the queue


class MicroBatcher:
    """Queues requests and scores them in dynamic micro-batches (see the module docstring).

    Args:
        scorer: rows -> one answer per row, in order; called in a worker thread, one call at a time.
        max_batch_size: the most rows one call gathers (a single larger request is scored alone, whole).
        max_wait_s: the longest the oldest waiting request is held for company before its batch is scored.
        observe: called on the event loop after each model call (``ServingMetrics.batch``).
    """

    def __init__(
        self, scorer: Scorer, max_batch_size: int = 64, max_wait_s: float = 0.005, observe: BatchObserver | None = None
    ) -> None:
        if max_batch_size < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch_size={max_batch_size} must be >= 1 and max_wait_s={max_wait_s} >= 0")
        self.scorer = scorer
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.observe = observe
        self.queue: deque[_Pending] = deque()
        self.closing = False
        self._wakeup: asyncio.Event | None = None
        self._worker: asyncio.Task | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker on the running event loop (done by the app's lifespan, or by the first request)."""
        if self._worker is None or self._worker.done():
            self.closing = False
            self._wakeup = asyncio.Event()
            self._worker = asyncio.get_running_loop().create_task(self._work(), name="finexp-batcher")

    async def close(self, timeout_s: float = 30.0) -> None:
        """Stop taking requests, score those already queued, then stop the worker (cancelled after ``timeout_s``);
        a request still waiting then is answered with :class:`BatcherClosed`."""
        self.closing = True
        if self._worker is not None and not self._worker.done():
            assert self._wakeup is not None
            self._wakeup.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._worker), timeout_s)
            except TimeoutError:
                log.warning("finexp-serve: the batch in progress did not finish in %g s; stopping anyway", timeout_s)
                self._worker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._worker
        while self.queue:
            pending = self.queue.popleft()
            if not pending.future.done():
                pending.future.set_exception(BatcherClosed("the server is shutting down"))

    def depth(self) -> tuple[int, int]:
        """Requests and rows waiting now (requests that already left are not counted)."""
        live = [p for p in self.queue if not p.future.done()]
        return len(live), sum(len(p.rows) for p in live)

    # -- requests --------------------------------------------------------------------------------------------
    async def run(self, rows: Rows, deadline: float) -> Rows | None:
        """The answers to ``rows``, or None when ``deadline`` (``loop.time()``) passed first.

        Raises:
            BatcherClosed: the server is shutting down.
            Exception: whatever the scorer raised on these rows alone.
        """
        if self.closing:
            raise BatcherClosed("the server is shutting down")
        self.start()
        assert self._wakeup is not None
        loop = asyncio.get_running_loop()
        pending = _Pending(rows, loop.create_future(), loop.time())
        self.queue.append(pending)
        self._wakeup.set()
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), max(0.0, deadline - loop.time()))
        except TimeoutError:
            return None
        finally:
            if not pending.future.done():  # timed out or the client left: the worker skips it, or drops its answers
                pending.future.cancel()

    # -- the worker ------------------------------------------------------------------------------------------
    def _fill(self, batch: list[_Pending], size: int) -> tuple[int, bool]:
        """Move waiting requests into ``batch`` while they fit; returns the rows and whether the batch is closed
        (full, or the next request does not fit)."""
        while self.queue:
            head = self.queue[0]
            if head.future.done():  # left before its turn
                self.queue.popleft()
                continue
            if batch and size + len(head.rows) > self.max_batch_size:
                return size, True
            self.queue.popleft()
            batch.append(head)
            size += len(head.rows)
            if size >= self.max_batch_size:
                return size, True
        return size, False

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wakeup is not None
        while True:
            batch: list[_Pending] = []
            size, closed = self._fill(batch, 0)
            while not batch:
                if self.closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                size, closed = self._fill(batch, 0)
            close_at = batch[0].queued + self.max_wait_s
            while not closed and not self.closing and (remaining := close_at - loop.time()) > 0:
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                size, closed = self._fill(batch, size)
            await self._score(batch, size)

    async def _score(self, batch: list[_Pending], size: int) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        waits = [started - pending.queued for pending in batch]
        rows = [row for pending in batch for row in pending.rows]
        try:
            answers = await asyncio.to_thread(self.scorer, rows)
            if len(answers) != size:
                raise RuntimeError(f"the scorer answered {len(answers)} rows for {size}")
        except Exception as err:
            if len(batch) == 1:
                self._settle(batch[0], error=err)
            else:  # find the request at fault: each scored alone, the others answered
                log.warning("finexp-serve: a batch of %d requests failed (%r); scoring each alone", len(batch), err)
                for pending in batch:
                    if pending.future.done():
                        continue
                    try:
                        self._settle(pending, await asyncio.to_thread(self.scorer, pending.rows))
                    except Exception as alone:
                        self._settle(pending, error=alone)
        else:
            start = 0
            for pending in batch:
                self._settle(pending, answers[start : start + len(pending.rows)])
                start += len(pending.rows)
        if self.observe is not None:
            self.observe(size, len(batch), waits, loop.time() - started)

    @staticmethod
    def _settle(pending: _Pending, answers: Rows | None = None, error: BaseException | None = None) -> None:
        if pending.future.done():  # it left (deadline, client gone): nobody is waiting for these answers
            return
        if error is not None:
            pending.future.set_exception(error)
        else:
            pending.future.set_result(answers)
