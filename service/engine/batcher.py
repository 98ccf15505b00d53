"""The dynamic batcher: concurrent requests for one model version share one onnxruntime run.

The model has one thread of its own that takes work straight from a queue. Greedy by design:
whenever that thread is free it runs everything waiting (up to ``max_batch_size`` rows) at once,
so a lone client never waits for company, and under load the requests that arrive during a run
form the next one. Because the thread pulls its next batch itself, the model never waits on a
busy event loop (decoding a large JSON body, say). ``max_batch_delay_ms`` can add a short wait for
company. The queue is bounded in rows: past it, ``Overloaded`` (503) at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.core.errors import Overloaded
from service.engine import tracing

Outputs = dict[str, np.ndarray]
RunBatch = Callable[[np.ndarray], Outputs]


@dataclass
class _Pending:
    """One request's images waiting for a run, and where its answer goes."""

    rows: np.ndarray
    future: asyncio.Future[Outputs]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)
    trace: tracing.Queued | None = None  # its span when the request is traced


@dataclass(frozen=True)
class BatchStats:
    """What one run did, for metrics."""

    rows: int
    requests: int
    seconds: float


def _resolve(future: asyncio.Future[Outputs], result: Outputs | BaseException) -> None:
    """On the request's event loop: hand over the answer unless the client has gone."""
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class DynamicBatcher:
    """Coalesces ``submit`` calls into runs of ``run_batch`` on the batcher's own thread."""

    def __init__(
        self,
        run_batch: RunBatch,
        *,
        max_batch_size: int = 64,
        max_batch_delay_ms: float = 0.0,
        max_queue_rows: int = 4096,
        on_batch: Callable[[BatchStats], None] | None = None,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1 or max_queue_rows < 1:
            raise ValueError("max_batch_size and max_queue_rows must be positive")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_ms / 1000.0
        self.max_queue_rows = max_queue_rows
        self._on_batch = on_batch
        # A C-level queue, as ThreadPoolExecutor uses: waking the thread costs no more than
        # handing one request to an executor would. None is the stop signal.
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._queued_rows = 0  # changed under ``_count`` by both sides
        self._count = threading.Lock()
        self._carry: _Pending | None = None  # taken from the queue but too big for that batch
        self._closed = False
        self._stop_seen = False  # the worker has read the stop signal
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(self, rows: np.ndarray) -> Outputs:
        """Run ``rows`` (one request's images) in some batch; returns exactly their outputs.

        A request of ``max_batch_size`` rows or more runs on its own, in runs of at most that
        many rows one after the other, joined again in order.
        """
        if self._closed:
            raise Overloaded("the model is shutting down; retry")
        with self._count:
            if self._queued_rows > 0 and self._queued_rows + len(rows) > self.max_queue_rows:
                raise Overloaded(
                    f"the batch queue is full ({self._queued_rows} images waiting); retry shortly"
                )
            self._queued_rows += len(rows)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        self._queue.put(_Pending(rows, future, loop, trace=tracing.queued()))
        return await future

    def _next(self, timeout: float | None) -> _Pending | None:
        """The next waiting request (blocking up to ``timeout``; None: stop, or none came)."""
        if self._carry is not None:
            carried, self._carry = self._carry, None
            return carried
        try:
            item = self._queue.get(timeout=timeout) if timeout != 0 else self._queue.get_nowait()
        except queue.Empty:
            return None
        if item is None:
            self._stop_seen = True
        return item

    def _take(self, first: _Pending) -> list[_Pending]:
        """``first`` and whatever else waits, up to ``max_batch_size`` rows (a larger request
        alone), oldest first."""
        batch, rows = [first], len(first.rows)
        deadline = first.enqueued + self.max_batch_delay_s
        while rows < self.max_batch_size:
            wait = max(0.0, deadline - time.perf_counter()) if self.max_batch_delay_s else 0
            item = self._next(wait)
            if item is None:
                if self._stop_seen or wait == 0 or time.perf_counter() >= deadline:
                    return batch
                continue
            if rows + len(item.rows) > self.max_batch_size:
                self._carry = item  # it opens the next batch
                break
            batch.append(item)
            rows += len(item.rows)
        return batch

    def _work(self) -> None:
        """The model's thread: take a batch, run it, answer each request with its rows."""
        while True:
            if self._stop_seen and self._queued_rows == 0:
                return  # stopped and drained (a request counted in is still on its way in)
            first = self._next(None)
            if first is None:
                continue
            batch = self._take(first)
            with self._count:
                self._queued_rows -= sum(len(b.rows) for b in batch)
            batch = [b for b in batch if not b.future.cancelled()]  # clients that went away
            if not batch:
                continue
            images = batch[0].rows if len(batch) == 1 else np.concatenate([b.rows for b in batch])
            try:
                with tracing.batch_span((b.trace for b in batch), len(images)):
                    outputs = self._run_in_chunks(images, len(batch))
            except Exception as exc:
                if len(batch) == 1:
                    self._answer(batch[0], exc)
                    continue
                # One request's images can fail a run (a graph that errs on some values): run
                # each alone, so only the requests that fail by themselves hear of it.
                for item in batch:
                    try:
                        self._answer(item, self._run_in_chunks(item.rows, 1))
                    except Exception as alone:
                        self._answer(item, alone)
                continue
            offset = 0
            for item in batch:
                end = offset + len(item.rows)
                self._answer(item, {k: v[offset:end] for k, v in outputs.items()})
                offset = end

    @staticmethod
    def _answer(item: _Pending, result: Outputs | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # that loop has closed; nobody waits any more
            item.loop.call_soon_threadsafe(_resolve, item.future, result)

    def _run_in_chunks(self, images: np.ndarray, requests: int) -> Outputs:
        """Runs of at most ``max_batch_size`` rows, joined in order."""
        parts: list[Outputs] = []
        for i in range(0, len(images), self.max_batch_size):
            chunk = images[i : i + self.max_batch_size]
            start = time.perf_counter()
            parts.append(self._run_batch(chunk))
            if self._on_batch is not None:
                self._on_batch(BatchStats(len(chunk), requests, time.perf_counter() - start))
        if len(parts) == 1:
            return parts[0]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def stop(self) -> None:
        """Refuse new work (from any thread); what is queued still runs, then the thread ends."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    async def close(self) -> None:
        """Refuse new work and wait until every queued request has its answer."""
        self.stop()
        await asyncio.to_thread(self._thread.join)
