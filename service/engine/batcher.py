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
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from service.core.errors import Overloaded

Outputs = dict[str, np.ndarray]
RunBatch = Callable[[np.ndarray], Outputs]


@dataclass
class _Pending:
    """One request's images waiting for a run, and where its answer goes."""

    rows: np.ndarray
    future: asyncio.Future[Outputs]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)


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
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._changed = threading.Condition()
        self._closed = False
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
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        with self._changed:
            if self._closed:
                raise Overloaded("the model is shutting down; retry")
            if self._queued_rows > 0 and self._queued_rows + len(rows) > self.max_queue_rows:
                raise Overloaded(
                    f"the batch queue is full ({self._queued_rows} images waiting); retry shortly"
                )
            self._queue.append(_Pending(rows, future, loop))
            self._queued_rows += len(rows)
            self._changed.notify()
        return await future

    def _take(self) -> list[_Pending]:
        """Pop whole requests up to ``max_batch_size`` rows (a larger one alone), oldest first.

        Called with the lock held.
        """
        batch: list[_Pending] = []
        rows = 0
        while self._queue and (not rows or rows + len(self._queue[0].rows) <= self.max_batch_size):
            item = self._queue.popleft()
            self._queued_rows -= len(item.rows)
            if item.future.cancelled():  # its client went away before the run
                continue
            batch.append(item)
            rows += len(item.rows)
        return batch

    def _wait_for_company(self) -> None:
        """With the lock held: wait up to the delay for a full batch."""
        deadline = self._queue[0].enqueued + self.max_batch_delay_s
        while self._queued_rows < self.max_batch_size and not self._closed:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._changed.wait(remaining)

    def _work(self) -> None:
        """The model's thread: take a batch, run it, answer each request with its rows."""
        while True:
            with self._changed:
                while not self._queue and not self._closed:
                    self._changed.wait()
                if not self._queue:
                    return  # closed and drained
                if self.max_batch_delay_s > 0:
                    self._wait_for_company()
                batch = self._take()
            if not batch:
                continue
            images = batch[0].rows if len(batch) == 1 else np.concatenate([b.rows for b in batch])
            try:
                outputs = self._run_in_chunks(images, len(batch))
            except Exception as exc:  # the whole batch failed: every request in it hears why
                for item in batch:
                    self._answer(item, exc)
                continue
            offset = 0
            for item in batch:
                end = offset + len(item.rows)
                self._answer(item, {k: v[offset:end] for k, v in outputs.items()})
                offset = end

    @staticmethod
    def _answer(item: _Pending, result: Outputs | BaseException) -> None:
        try:
            item.loop.call_soon_threadsafe(_resolve, item.future, result)
        except RuntimeError:  # that event loop has closed; nobody is waiting any more
            pass

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
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    async def close(self) -> None:
        """Refuse new work and wait until every queued request has its answer."""
        self.stop()
        await asyncio.to_thread(self._thread.join)
