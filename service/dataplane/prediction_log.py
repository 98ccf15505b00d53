"""The prediction log: every answered classification queued off the request path and written in
batches by one background thread (``prediction_store``). A slow or dead database never slows or
fails a prediction: past ``PREDICTION_LOG_QUEUE`` records (or when a write fails) records are
dropped, counted in ``prediction_log_dropped_total`` and logged at most once a minute."""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Sequence
from typing import Any

import numpy as np
import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.engine import Engine

from service.core.logs import REQUEST_ID, new_request_id, stored_id
from service.dataplane import prediction_store as store
from service.dataplane.prediction_rows import Answer, make_rows
from service.engine import thread_policy
from service.engine.batcher import Outputs, Rows, Tagged
from service.engine.thread_policy import ThreadScheduling
from service.settings import Settings

log = logging.getLogger(__name__)

BATCH_ROWS = 512  # records per insert
FLUSH_INTERVAL_S = 0.5  # how often the writer looks for records (a flush or close wakes it)
PRUNE_INTERVAL_S = 60.0
DRAIN_PASS_S = 1.0  # of writing before retention and the writer's CPU metric get their turn
ROW_BYTES = 100  # a row's stored bytes besides its id and captured image (about)
SIZE_CHECK_INTERVAL_S = 5.0  # the stored bytes (a few pragmas): a flood's rows land within it
WARN_INTERVAL_S = 60.0
# Bytes of outputs and captured images the queue may hold, beside its count of runs: a run of
# 1,024 images holds its outputs and, captured, 3 MiB of pixels, so a queue of 65,536 runs
# waiting for a slow database could have held hundreds of GiB.
MAX_PENDING_BYTES = 256 * 1024 * 1024
# Failures a database that is down or busy raises (connection refused or cut, locked): worth a
# retry. Others (a value the column refuses) would fail again.
RETRYABLE = (sa.exc.OperationalError, sa.exc.InterfaceError)


def logged_id(id: str | None) -> str:
    """The id an answer is logged under, the one the client sees: the v2 or gRPC ``id`` it gave,
    else the request's X-Request-ID (a fresh id outside a REST request: gRPC without an id)."""
    request_id = id or REQUEST_ID.get()
    return new_request_id() if request_id == "-" else request_id


class PredictionLog:
    """The queue and its writer thread; ``record_run`` (or ``record``) is all a request costs."""

    def __init__(
        self,
        url: str,
        registry: CollectorRegistry,
        capacity: int,
        capture_rate: float,
        retention: tuple[float, int],
        retry_s: float = 0.0,
        scheduling: ThreadScheduling = "batch",
        max_bytes: int = MAX_PENDING_BYTES,
        max_stored_bytes: int | None = None,
    ) -> None:
        self.url, self.capture_rate = url, capture_rate
        self._scheduling = scheduling  # the writer's (``thread_policy``): set by the writer
        self.max_age_s, self.max_rows = retention
        self.max_stored_bytes = max_stored_bytes  # PREDICTION_LOG_MAX_BYTES (SQLite's file)
        # A deque, not queue.Queue: an append takes no lock and wakes no thread; the writer
        # looks every FLUSH_INTERVAL_S, so a busy server pays one transaction per interval.
        self.capacity, self.max_bytes = capacity, max_bytes
        self._pending: deque[Answer] = deque()
        self._pending_bytes = 0  # of the queued answers' arrays (``MAX_PENDING_BYTES``)
        self._bytes_lock = threading.Lock()  # the model threads add, the writer takes away
        self._wake, self._closing, self._busy = threading.Event(), False, False
        # A batch whose write failed while the database was down, retried each interval for up
        # to ``retry_s`` (0: dropped at once); meanwhile new answers wait in the bounded queue.
        self.retry_s = retry_s
        self._held: list[store.Row] = []
        self._writing: set[str] = set()  # the ids of the batch being written
        self._taking = threading.Lock()  # the writer taking a batch, or ``queued`` looking
        self._held_since: float | None = None  # when the held batch first failed
        self._metrics(registry)
        self._warned_at = -WARN_INTERVAL_S
        self._pruned_at = self._sized_at = time.monotonic()
        self._unsized = 0  # about the bytes written since the stored bytes were last checked
        self._engine: Engine | None = None
        self._engine_lock = threading.Lock()  # the writer and the monitor's threads connect
        # told of every batch written (the quality metrics), on the writer thread
        self.on_written: Callable[[Sequence[store.Row]], None] | None = None
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    def _metrics(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "prediction_log_written", "Records written to the prediction log.", registry=registry
        )
        self.dropped = Counter(
            "prediction_log_dropped",
            "Records the prediction log dropped (queue full or database write failed).",
            ["reason"],
            registry=registry,
        )
        self.writer_cpu = Counter(
            "prediction_log_writer_cpu_seconds",
            "CPU time of the prediction log's writer thread (rows made, written, pruned): "
            "its rate is the share of a core the log costs.",
            registry=registry,
        )
        self.pruned = Counter(
            "prediction_log_pruned",
            "Records pruned: past PREDICTION_LOG_MAX_AGE_S or _MAX_ROWS (retention), or to keep "
            "the file within PREDICTION_LOG_MAX_BYTES (bytes).",
            ["reason"],
            registry=registry,
        )
        self.write_errors = Counter(
            "prediction_log_write_errors",
            "Failed writes (transactions) of the prediction log; their records were retried "
            "(PREDICTION_LOG_RETRY_S) or dropped.",
            registry=registry,
        )

    # -- the request path -----------------------------------------------------------------------

    def record(
        self, request_id: str, model: str, version: int, pixels: np.ndarray, outputs: Any
    ) -> None:
        """Queue one request's answer, where no run told of it (a response cache's answer)."""
        self.record_run(model, version, [(request_id, 0, len(pixels))], outputs, pixels)

    def record_run(
        self, model: str, version: int, tagged: Tagged, outputs: Outputs, rows: Rows
    ) -> None:
        """Queue a run's answers: ``tagged`` holds each request's id and rows in ``outputs``
        (the model's thread calls this once per batch, which spares the loop an object per
        request kept until the writer comes). About a microsecond: the rows are made by the
        writer; never blocks, never raises. Runs with neither output are not recorded."""
        if "probabilities" not in outputs and "logits" not in outputs:
            return
        count = sum(end - start for _, start, end in tagged)
        if len(self._pending) >= self.capacity:
            self._drop("queue_full", count)
            return
        captured = self._captured(tagged, rows) if self.capture_rate > 0 else None
        size = _nbytes(outputs, captured)
        with self._bytes_lock:
            full = self._pending_bytes + size > self.max_bytes
            if not full:
                self._pending_bytes += size
        if full:
            self._drop("queue_full", count)
            return
        answer = (tagged, model, version, time.time(), outputs, captured, count, size)
        self._pending.append(answer)

    def _captured(self, tagged: Tagged, rows: Rows) -> list[np.ndarray | None] | None:
        """Each request's pixels, kept at the capture rate; copies: the rows may be a view of a
        body or a shared memory region that changes."""
        if not isinstance(rows, np.ndarray) or rows.dtype != np.uint8:
            return None
        rate = self.capture_rate
        return [rows[a:b].copy() if random.random() < rate else None for _, a, b in tagged]

    # -- the writer thread ----------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The database, connected (and its tables made) on first use, by one thread: two making
        the tables at once raced ("database is locked", then "table already exists"); raises
        when it can't be."""
        with self._engine_lock:
            if self._engine is None:
                self._engine = store.connect(self.url)
        return self._engine

    def _run(self) -> None:
        thread_policy.apply(self._scheduling)  # a background writer never preempts the loop
        more = False
        while True:
            if not more:
                self._wake.wait(FLUSH_INTERVAL_S)
                self._wake.clear()
            closing = self._closing  # read before draining: what came before it is written
            start = time.thread_time()
            more = self._drain()
            self._maybe_prune()
            self.writer_cpu.inc(time.thread_time() - start)
            if closing and not more:
                return

    def _drain(self) -> bool:
        """Write what is pending, BATCH_ROWS per transaction, for at most ``DRAIN_PASS_S``
        (whether some is still pending: retention runs between passes, or a flood that kept
        the writer busy grew the file without bound); stop early while a failed batch waits
        for its retry (the database is down: the next batches would fail too)."""
        self._busy = True
        end = time.monotonic() + DRAIN_PASS_S
        try:
            while self._held or self._pending:
                if time.monotonic() >= end or self._size_due():
                    return True
                with self._taking:  # ``queued`` sees each answer in one place or the other
                    batch, self._held = self._held or self._next_batch(), []
                    self._writing = {row[0] for row in batch}
                error = self._write(batch)  # ``_writing`` stays until the next batch is taken
                if error is None:
                    self._held_since = None
                elif self._hold(batch, error):
                    return False
            return False
        finally:
            self._busy, self._writing = False, set()  # held, or written

    def _next_batch(self) -> list[store.Row]:
        pending, answers, count, size = self._pending, [], 0, 0
        while pending and count < BATCH_ROWS:
            answer = pending.popleft()
            answers.append(answer)
            count += answer[6]
            size += answer[7]
        with self._bytes_lock:
            self._pending_bytes -= size
        try:
            return make_rows(answers)
        except Exception as exc:  # an answer no row can be made of: never the writer's end
            self._drop("write_failed", count, exc)
            return []

    def _write(self, batch: list[store.Row]) -> Exception | None:
        if not batch:
            return None
        try:
            store.insert(self.engine, batch)
        except Exception as exc:  # any database failure: retried or dropped, counted
            self.write_errors.inc()
            return exc
        self.written.inc(len(batch))
        self._unsized += sum(ROW_BYTES + len(row[0]) + len(row[7] or b"") for row in batch)
        if self.on_written is not None:
            try:
                self.on_written(batch)
            except Exception:  # metrics must never stop the writer
                log.exception("prediction log: counting a written batch failed")
        return None

    def _hold(self, batch: list[store.Row], error: Exception) -> bool:
        """Keep a failed batch for a retry (True), within ``retry_s`` of its first failure and
        only for a database that is down or busy; else it is dropped and counted (False)."""
        retry = self.retry_s > 0 and not self._closing and isinstance(error, RETRYABLE)
        now, since = time.monotonic(), self._held_since
        if retry and since is None:
            since = self._held_since = now
            self._warn(f"write failed, retrying for up to {self.retry_s:g} s: {error}")
        if retry and since is not None and now - since < self.retry_s:
            self._held = batch
            return True
        self._held_since = None
        self._drop("write_failed", len(batch), error)
        return False

    def _size_due(self) -> bool:
        """An eighth of PREDICTION_LOG_MAX_BYTES written since the last check: at 40 MB/s of
        captured images, a check every 5 s alone let the file grow 200 MB past the bound."""
        bound = self.max_stored_bytes
        return bound is not None and self._unsized >= max(bound // 8, 1)

    def _maybe_prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at >= PRUNE_INTERVAL_S:
            self.prune()
        elif self.max_stored_bytes is not None and (
            now - self._sized_at >= SIZE_CHECK_INTERVAL_S or self._size_due()
        ):
            self._sized_at, self._unsized = now, 0
            self._after_prune(self._prune_to_bytes())

    def prune(self) -> int:
        """Retention: records past PREDICTION_LOG_MAX_AGE_S or PREDICTION_LOG_MAX_ROWS go, and
        the oldest while the file holds more than PREDICTION_LOG_MAX_BYTES."""
        self._pruned_at = self._sized_at = time.monotonic()
        self._unsized = 0
        try:
            count = store.prune(self.engine, self.max_age_s, self.max_rows)
        except Exception as exc:
            log.warning("prediction log: pruning failed: %s", exc)
            return 0
        self.pruned.labels("retention").inc(count)
        return self._after_prune(count + self._prune_to_bytes())

    def _after_prune(self, count: int) -> int:
        """What a prune freed is in SQLite's WAL: write it back and empty the WAL."""
        if count:
            try:
                store.checkpoint(self.engine)
            except Exception as exc:
                log.warning("prediction log: checkpoint after pruning failed: %s", exc)
        return count

    def _prune_to_bytes(self) -> int:
        if self.max_stored_bytes is None:
            return 0
        try:
            count = store.prune_to_bytes(self.engine, self.max_stored_bytes)
        except Exception as exc:
            log.warning("prediction log: pruning to PREDICTION_LOG_MAX_BYTES failed: %s", exc)
            return 0
        if count:
            self.pruned.labels("bytes").inc(count)
            self._warn(f"{count} oldest record(s) pruned to keep within PREDICTION_LOG_MAX_BYTES")
        return count

    def _drop(self, reason: str, count: int, exc: Exception | None = None) -> None:
        self.dropped.labels(reason).inc(count)
        why = f": {exc}" if exc else ""
        self._warn(f"dropped {count} record(s), {reason}{why}")

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= WARN_INTERVAL_S:  # at most once a minute
            self._warned_at = now
            log.warning("prediction log: %s", message)

    def queued(self, ids: Collection[str]) -> bool:
        """Whether an answer to any of ``ids`` (as stored) is still on its way to the database:
        feedback waits for those, and only those, so an unknown id is a prompt 404."""
        with self._taking:
            pending, writing = list(self._pending), self._writing | {r[0] for r in self._held}
        if any(id in writing for id in ids):
            return True
        return any(stored_id(tag[0]) in ids for answer in pending for tag in answer[0])

    # -- flushing and shutdown ------------------------------------------------------------------

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the queued records to be written (or dropped)."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self._pending or self._held or self._busy:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout_s: float) -> None:
        """Write what is queued (within ``timeout_s``), then stop the writer."""
        self._closing = True
        self._wake.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            log.warning("prediction log: records still queued at shutdown were lost")
        elif self._engine is not None:
            self._engine.dispose()


def _nbytes(outputs: Any, captured: list[np.ndarray | None] | None) -> int:
    """The bytes of a queued run's output arrays and captured images."""
    size = sum(int(array.nbytes) for array in outputs.values())
    return size + sum(int(image.nbytes) for image in captured or () if image is not None)


def open_prediction_log(settings: Settings, registry: CollectorRegistry) -> PredictionLog | None:
    """The log ``settings`` ask for (None with PREDICTION_LOG=false); the database is opened
    by the writer thread, so a dead one never delays start-up."""
    if not settings.prediction_log:
        return None
    url = store.database_url(settings.prediction_log_url, settings.data_dir)
    retention = (settings.prediction_log_max_age_s, settings.prediction_log_max_rows)
    return PredictionLog(
        url,
        registry,
        settings.prediction_log_queue,
        settings.capture_images,
        retention,
        settings.prediction_log_retry_s,
        settings.thread_scheduling,
        max_stored_bytes=settings.prediction_log_max_bytes or None,
    )
