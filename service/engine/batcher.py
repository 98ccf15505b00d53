"""The dynamic batcher: concurrent requests for one model version share one onnxruntime run.

Greedy by design: whenever the model's thread is free, everything waiting (up to
``max_batch_size`` rows) runs at once, so a lone client never waits for company; under load the
requests that arrive during a run form the next batch. ``max_batch_delay_ms`` can add a short wait
for company on top. The queue is bounded in rows: past it, ``Overloaded`` (503) at once.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

from service.core.errors import Overloaded

Outputs = dict[str, np.ndarray]
RunBatch = Callable[[np.ndarray], Outputs]


@dataclass
class _Pending:
    """A slice of one request waiting for its batch."""

    rows: np.ndarray
    future: asyncio.Future[Outputs]
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass(frozen=True)
class BatchStats:
    """What one run did, for metrics."""

    rows: int
    requests: int
    seconds: float


class DynamicBatcher:
    """Coalesces ``submit`` calls into runs of ``run_batch`` on ``executor`` (one thread)."""

    def __init__(
        self,
        run_batch: RunBatch,
        executor: Executor,
        *,
        max_batch_size: int = 64,
        max_batch_delay_ms: float = 0.0,
        max_queue_rows: int = 4096,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue_rows < 1:
            raise ValueError("max_batch_size and max_queue_rows must be positive")
        self._run_batch = run_batch
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_ms / 1000.0
        self.max_queue_rows = max_queue_rows
        self._on_batch = on_batch
        self._queue: deque[_Pending] = deque()
        self._queued_rows = 0
        self._busy = False  # a run is on the model's thread
        self._drain: asyncio.Task[None] | None = None
        self._arrived: asyncio.Event | None = None  # set on each enqueue, for the delay's wait
        self._closed = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(self, rows: np.ndarray) -> Outputs:
        """Run ``rows`` (one request's images) in some batch; returns exactly their outputs.

        Requests larger than ``max_batch_size`` are split into chunks and joined again in order.
        """
        if self._closed:
            raise Overloaded("the model is shutting down; retry")
        n = len(rows)
        idle = not self._busy and not self._queue and self.max_batch_delay_s == 0
        if idle and 0 < n <= self.max_batch_size:  # run at once, exactly as without batching
            return await self._run_alone(rows)
        if self._queued_rows + n > self.max_queue_rows and self._queued_rows > 0:
            raise Overloaded(
                f"the batch queue is full ({self._queued_rows} images waiting); retry shortly"
            )
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Outputs]] = []
        for i in range(0, n, self.max_batch_size):
            chunk = rows[i : i + self.max_batch_size]
            future: asyncio.Future[Outputs] = loop.create_future()
            self._queue.append(_Pending(chunk, future))
            self._queued_rows += len(chunk)
            futures.append(future)
        if self._arrived is not None:
            self._arrived.set()
        self._kick()
        if len(futures) == 1:
            return await futures[0]
        parts = await asyncio.gather(*futures)
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    async def _run_alone(self, rows: np.ndarray) -> Outputs:
        self._busy = True
        try:
            return await self._run(rows, requests=1)
        finally:
            self._busy = False
            self._kick()

    async def _run(self, images: np.ndarray, requests: int) -> Outputs:
        loop = asyncio.get_running_loop()
        start = time.perf_counter()
        outputs = await loop.run_in_executor(self._executor, self._run_batch, images)
        if self._on_batch is not None:
            self._on_batch(BatchStats(len(images), requests, time.perf_counter() - start))
        return outputs

    def _kick(self) -> None:
        """Start draining the queue unless a run or a drain is already under way."""
        if self._queue and not self._busy and (self._drain is None or self._drain.done()):
            self._drain = asyncio.get_running_loop().create_task(self._drain_queue())

    def _take(self) -> list[_Pending]:
        """Pop whole chunks up to ``max_batch_size`` rows, oldest first."""
        batch: list[_Pending] = []
        rows = 0
        while self._queue and rows + len(self._queue[0].rows) <= self.max_batch_size:
            item = self._queue.popleft()
            self._queued_rows -= len(item.rows)
            if item.future.cancelled():  # its client went away before the run
                continue
            batch.append(item)
            rows += len(item.rows)
        return batch

    async def _wait_for_company(self) -> None:
        deadline = self._queue[0].enqueued + self.max_batch_delay_s
        self._arrived = self._arrived or asyncio.Event()
        while self._queued_rows < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), remaining)
            except TimeoutError:
                return

    async def _drain_queue(self) -> None:
        while self._queue and not self._busy:
            self._busy = True
            try:
                if self.max_batch_delay_s > 0:
                    await self._wait_for_company()
                batch = self._take()
                if not batch:
                    continue
                images = (
                    batch[0].rows if len(batch) == 1 else np.concatenate([b.rows for b in batch])
                )
                try:
                    outputs = await self._run(images, requests=len(batch))
                except Exception as exc:  # the whole batch failed: every request in it hears why
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)
                    continue
                offset = 0
                for item in batch:
                    end = offset + len(item.rows)
                    if not item.future.done():  # a cancelled request just drops its rows
                        item.future.set_result({k: v[offset:end] for k, v in outputs.items()})
                    offset = end
            finally:
                self._busy = False

    def stop(self) -> None:
        """Refuse new work (from any thread); what is queued still runs."""
        self._closed = True

    async def close(self) -> None:
        """Refuse new work; queued and running requests still get their answers."""
        self._closed = True
        while self._busy or self._queue or (self._drain is not None and not self._drain.done()):
            if self._drain is not None and not self._drain.done():
                await self._drain
            else:
                await asyncio.sleep(0.001)
