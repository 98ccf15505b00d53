"""The dynamic batcher: concurrent requests for one model version share one onnxruntime run.

The model has one thread of its own that takes work straight from a queue. Greedy by design:
whenever that thread is free it runs everything waiting (up to ``max_batch_size`` rows) at once,
so a lone client never waits for company, and under load the requests that arrive during a run
form the next one. Because the thread pulls its next batch itself, the model never waits on a
busy event loop (decoding a large JSON body, say). ``max_batch_delay_ms`` can add a short wait for
company. The queue is bounded in rows: past it, ``Overloaded`` (503) at once. A request whose
``timeout_s`` runs out while it is queued, or whose caller went away, is dropped before its batch
runs; ``statistics`` (Triton's statistics extension) counts what each batch did. A request may
come undecoded (``submit``'s ``make``): the thread makes its rows just before its run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.core.errors import Overloaded, TimeoutExpired
from service.engine import thread_policy, tracing
from service.engine.named_rows import NamedRows, concatenate
from service.engine.statistics import InferenceStatistics

Outputs = dict[str, np.ndarray]
# One request's input: an image batch, or a tensor model's inputs by name.
Rows = np.ndarray | NamedRows
# Takes ``Rows``; typed loosely so a run for image batches alone (``np.ndarray``) fits too.
RunBatch = Callable[[Any], Outputs]
# (tag, first row, end row) of a tagged request within its run's outputs
Tagged = list[tuple[Any, int, int]]
_UNMADE = np.zeros((1,), np.uint8)  # an undecoded request's rows: counted as one until made
# An undecoded request's maker: its rows (and its tag), made on the thread before its run
Maker = Callable[[], tuple[Rows, Any]] | None
# Told of each run's tagged requests with the run's whole outputs and input, on the thread that
# ran it, before the answers are handed over: one call per run, not per request (the prediction
# log keeps a run's arrays once instead of every request's own).
Answered = Callable[[Tagged, Outputs, Rows], None]


@dataclass
class _Pending:
    """One request's images (or named inputs) waiting for a run, and where its answer goes."""

    rows: Rows
    future: asyncio.Future[Outputs]
    loop: asyncio.AbstractEventLoop
    enqueued: float = field(default_factory=time.perf_counter)
    deadline: float = math.inf  # perf_counter time after which it must not run
    taken: bool = False  # the batcher has it: past its queue, it runs to the end
    trace: tracing.Queued | None = None  # its span when the request is traced
    tag: Any = None  # what ``on_answered`` hears it by (None: not told of)
    make: Maker = None  # its rows, made on the thread before its run


@dataclass(frozen=True)
class BatchStats:
    """What one run did, for metrics; ``dropped`` runs none: requests timed out or cancelled."""

    rows: int
    requests: int
    seconds: float
    timed_out: int = 0
    cancelled: int = 0


def _resolve(future: asyncio.Future[Outputs], result: Outputs | BaseException) -> None:
    """On the request's event loop: hand over the answer unless the client has gone."""
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


def _resolve_all(results: list[tuple[asyncio.Future[Outputs], Outputs]]) -> None:
    for future, result in results:
        _resolve(future, result)


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
        on_answered: Answered | None = None,
        name: str = "batcher",
        statistics: InferenceStatistics | None = None,
        scheduling: thread_policy.ThreadScheduling = "batch",
    ) -> None:
        if max_batch_size < 1 or max_queue_rows < 1:
            raise ValueError("max_batch_size and max_queue_rows must be positive")
        self._run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_batch_delay_s = max_batch_delay_ms / 1000.0
        self.max_queue_rows = max_queue_rows
        self._on_batch = on_batch
        self._on_answered = on_answered
        self.statistics = statistics or InferenceStatistics()
        self._scheduling = scheduling  # the thread's (``thread_policy``): set by the thread
        # A C-level queue, as ThreadPoolExecutor uses: waking the thread costs no more than
        # handing one request to an executor would. None is the stop signal.
        self._queue: queue.SimpleQueue[_Pending | None] = queue.SimpleQueue()
        self._queued_rows = 0  # changed under ``_count`` by both sides
        self._queued_requests = 0  # likewise: the requests those rows belong to
        self._count = threading.Lock()
        self._carry: _Pending | None = None  # taken from the queue but too big for that batch
        self._running = False  # the thread holds a batch (taken, not yet answered)
        self._closed = False
        self._stop_seen = False  # the worker has read the stop signal
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    @property
    def queued_requests(self) -> int:
        return self._queued_requests

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch running (the runtime's test for running a lone request
        inline; a request counted in is queued from that moment)."""
        return self._queued_rows == 0 and not self._running

    async def submit(
        self, rows: Rows | None, timeout_s: float = 0.0, tag: Any = None, make: Maker = None
    ) -> Outputs:
        """Run ``rows`` (one request's images) in some batch; returns exactly their outputs
        (``on_answered`` hears of them under ``tag`` unless it is None). ``make`` instead of
        rows: the thread makes them just before the run (what it raises is the answer).

        A request of ``max_batch_size`` rows or more runs on its own, in runs of at most that
        many rows one after the other, joined again in order. Still queued after ``timeout_s``
        (0: no limit): ``TimeoutExpired``, and it never runs.
        """
        if self._closed:
            raise Overloaded("the model is shutting down; retry")
        rows = _UNMADE if rows is None else rows
        with self._count:
            if self._queued_rows > 0 and self._queued_rows + len(rows) > self.max_queue_rows:
                self.statistics.record_fail(1, 0, "REJECTED")
                raise Overloaded(
                    f"the batch queue is full ({self._queued_rows} images waiting); retry shortly"
                )
            self._queued_rows += len(rows)
            self._queued_requests += 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outputs] = loop.create_future()
        item = _Pending(rows, future, loop, trace=tracing.queued(), tag=tag, make=make)
        if not timeout_s:
            self._queue.put(item)
            return await future
        item.deadline = item.enqueued + timeout_s
        self._queue.put(item)
        return await _wait(item, timeout_s)

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
        """The model's thread: take a batch, drop the requests nobody waits for, run the rest."""
        thread_policy.apply(self._scheduling)
        while True:
            if self._stop_seen and self._queued_rows == 0:
                return  # stopped and drained (a request counted in is still on its way in)
            first = self._next(None)
            if first is None:
                continue
            self._running = True  # before its rows leave the count, so ``idle`` never blinks
            batch = self._take(first)
            with self._count:
                self._queued_rows -= sum(len(b.rows) for b in batch)
                self._queued_requests -= len(batch)
            batch = self._made(self._live(batch))
            if batch:
                self._run(batch)
            self._running = False

    def _live(self, batch: list[_Pending]) -> list[_Pending]:
        """The requests still wanted: cancelled ones (clients that went away) and expired ones
        (answered ``TimeoutExpired``) are dropped here, before they reach the model."""
        now = time.perf_counter()
        live: list[_Pending] = []
        timed_out = cancelled = expired_ns = cancelled_ns = 0
        for item in batch:
            item.taken = True  # from here a timeout no longer cancels it (see ``_wait``)
            if now >= item.deadline:
                timed_out += 1
                expired_ns += int((now - item.enqueued) * 1e9)
                self._answer(item, _expired(item))
            elif item.future.cancelled():
                cancelled += 1
                cancelled_ns += int((now - item.enqueued) * 1e9)
            else:
                live.append(item)
        if timed_out:
            self.statistics.record_fail(timed_out, expired_ns, "REJECTED")
        if cancelled:
            self.statistics.record_fail(cancelled, cancelled_ns, "CANCELED")
        if (timed_out or cancelled) and self._on_batch is not None:
            self._on_batch(BatchStats(0, 0, 0.0, timed_out, cancelled))
        return live

    def _made(self, batch: list[_Pending]) -> list[_Pending]:
        """The batch with every undecoded request's rows made, one after another; a request
        whose ``make`` raises is answered so (it never reached the model: not counted)."""
        made: list[_Pending] = []
        for item in batch:
            if item.make is not None:
                try:
                    item.rows, item.tag = item.make()
                except Exception as exc:
                    self._answer(item, exc)
                    continue
            made.append(item)
        return made

    def _run(self, batch: list[_Pending]) -> None:
        """One batch: gather its input, run it, hand each request its rows; timed throughout."""
        start = time.perf_counter()
        images = batch[0].rows if len(batch) == 1 else concatenate([b.rows for b in batch])
        gathered = time.perf_counter()
        try:
            with tracing.batch_span((b.trace for b in batch), len(images)):
                outputs, runs = self._run_in_chunks(images, len(batch))
        except Exception as exc:
            self._run_alone(batch, exc)
            return
        ran = time.perf_counter()
        ends = list(itertools.accumulate(len(item.rows) for item in batch))
        spans = list(zip(batch, [0, *ends[:-1]], ends, strict=True))
        self._tell(spans, outputs, images)
        answers = [
            (item, {k: v[first:end] for k, v in outputs.items()}) for item, first, end in spans
        ]
        self._answer_all(answers)
        done = time.perf_counter()
        self._record(batch, runs, (start, gathered, ran, done))

    def _tell(self, spans: list[tuple[_Pending, int, int]], outputs: Outputs, rows: Rows) -> None:
        """``on_answered`` of the tagged requests among ``spans`` (each with its rows in the
        run), before any answer is handed over (a client may act on its answer at once: label
        it, say); the observer must not raise (the runtime's guards itself)."""
        if self._on_answered is None:
            return
        tagged = [(item.tag, first, end) for item, first, end in spans if item.tag is not None]
        if tagged:
            self._on_answered(tagged, outputs, rows)

    def _record(
        self, batch: list[_Pending], runs: list[tuple[int, int]], times: tuple[float, ...]
    ) -> None:
        """Statistics for a batch that ran: its executions, and each request's share."""
        start, gathered, ran, done = times
        input_ns, output_ns = int((gathered - start) * 1e9), int((done - ran) * 1e9)
        infer_ns = sum(ns for _, ns in runs)
        statistics = self.statistics
        for rows, ns in runs:
            statistics.record_execution(rows, input_ns // len(runs), ns, output_ns // len(runs))
        queue_s = sum(start - item.enqueued for item in batch)
        total_s = sum(done - item.enqueued for item in batch)
        statistics.record_batch(
            len(batch), int(queue_s * 1e9), (input_ns, infer_ns, output_ns), int(total_s * 1e9)
        )

    def _run_alone(self, batch: list[_Pending], error: Exception) -> None:
        """A batch that failed: one request's images can fail a run (a graph that errs on some
        values), so each runs alone and only the requests that fail by themselves hear of it."""
        if len(batch) == 1:
            self._fail(batch[0], error)
            return
        for item in batch:
            start = time.perf_counter()
            try:
                outputs, runs = self._run_in_chunks(item.rows, 1)
            except Exception as alone:
                self._fail(item, alone)
                continue
            done = time.perf_counter()
            self._tell([(item, 0, len(item.rows))], outputs, item.rows)
            self._answer(item, outputs)
            self._record([item], runs, (start, start, done, done))

    def _fail(self, item: _Pending, error: Exception) -> None:
        self._answer(item, error)
        self.statistics.record_fail(1, int((time.perf_counter() - item.enqueued) * 1e9), "BACKEND")

    @staticmethod
    def _answer(item: _Pending, result: Outputs | BaseException) -> None:
        with contextlib.suppress(RuntimeError):  # that loop has closed; nobody waits any more
            item.loop.call_soon_threadsafe(_resolve, item.future, result)

    @staticmethod
    def _answer_all(answers: list[tuple[_Pending, Outputs]]) -> None:
        """A run's answers, handed to each event loop in one call: the loop wakes once for the
        run and resumes every request in the same turn, not once per request."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Outputs], Outputs]]]
        by_loop = {}
        for item, result in answers:
            by_loop.setdefault(item.loop, []).append((item.future, result))
        for loop, results in by_loop.items():
            with contextlib.suppress(RuntimeError):  # that loop has closed; nobody waits
                loop.call_soon_threadsafe(_resolve_all, results)

    def _run_in_chunks(self, images: Rows, requests: int) -> tuple[Outputs, list[tuple[int, int]]]:
        """Runs of at most ``max_batch_size`` rows, joined in order; with each run's (rows, ns)."""
        parts: list[Outputs] = []
        runs: list[tuple[int, int]] = []
        for i in range(0, len(images), self.max_batch_size):
            chunk = images[i : i + self.max_batch_size]
            start = time.perf_counter()
            parts.append(self._run_batch(chunk))
            seconds = time.perf_counter() - start
            runs.append((len(chunk), int(seconds * 1e9)))
            if self._on_batch is not None:
                self._on_batch(BatchStats(len(chunk), requests, seconds))
        if len(parts) == 1:
            return parts[0], runs
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}, runs

    def stop(self) -> None:
        """Refuse new work (from any thread); what is queued still runs, then the thread ends."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)

    async def close(self) -> None:
        """Refuse new work and wait until every queued request has its answer."""
        self.stop()
        await asyncio.to_thread(self._thread.join)


def _expired(item: _Pending) -> TimeoutExpired:
    waited_us = int((item.deadline - item.enqueued) * 1e6)
    return TimeoutExpired(f"Request timeout expired: still queued after {waited_us} us")


async def _wait(item: _Pending, timeout_s: float) -> Outputs:
    """``item``'s answer; once ``timeout_s`` has passed with it still queued, ``TimeoutExpired``
    at once (not when the batcher gets to it) and the batcher drops it. A caller that goes away
    (its task cancelled) cancels it too."""
    future = item.future
    try:
        done, _ = await asyncio.wait((future,), timeout=timeout_s)
    except asyncio.CancelledError:
        future.cancel()
        raise
    if not done and not item.taken:
        future.cancel()  # the batcher sees it cancelled, past its deadline: counted as timed out
        raise _expired(item)
    return await future  # running already: it finishes, as Triton lets a started request do
