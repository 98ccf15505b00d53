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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter
from sqlalchemy.engine import Engine

from service.dataplane import prediction_store as store
from service.settings import Settings

log = logging.getLogger(__name__)

BATCH_ROWS = 512  # records per insert
FLUSH_INTERVAL_S = 0.5  # how often the writer looks for records (a flush or close wakes it)
PRUNE_INTERVAL_S = 60.0
WARN_INTERVAL_S = 60.0
CAPTURED_SHAPE = (32, 32, 3)
# request id, model, version, Unix time, the outputs, the pixels when captured
Answer = tuple[str, str, int, float, Mapping[str, np.ndarray], np.ndarray | None]


def top1(outputs: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(class index, probability) per image from ``probabilities``, else softmax of ``logits``
    (only the top term is computed); None when neither output was asked."""
    probabilities = outputs.get("probabilities")
    if probabilities is not None and probabilities.ndim == 2:
        return probabilities.argmax(axis=1), probabilities.max(axis=1).astype(np.float64)
    logits = outputs.get("logits")
    if logits is None or logits.ndim != 2:
        return None
    logits = logits.astype(np.float64)
    best = logits.max(axis=1, keepdims=True)
    return logits.argmax(axis=1), 1.0 / np.exp(logits - best).sum(axis=1)


class PredictionLog:
    """The queue and its writer thread; ``record`` is all the request path does."""

    def __init__(
        self,
        url: str,
        registry: CollectorRegistry,
        capacity: int,
        capture_rate: float,
        retention: tuple[float, int],
    ) -> None:
        self.url, self.capture_rate = url, capture_rate
        self.max_age_s, self.max_rows = retention
        # A deque, not queue.Queue: an append takes no lock and wakes no thread; the writer
        # looks every FLUSH_INTERVAL_S, so a busy server pays one transaction per interval.
        self.capacity = capacity
        self._pending: deque[Answer] = deque()
        self._wake, self._closing, self._busy = threading.Event(), False, False
        self.written = Counter(
            "prediction_log_written", "Records written to the prediction log.", registry=registry
        )
        self.dropped = Counter(
            "prediction_log_dropped",
            "Records the prediction log dropped (queue full or database write failed).",
            ["reason"],
            registry=registry,
        )
        self._warned_at = -WARN_INTERVAL_S
        self._pruned_at = time.monotonic()
        self._engine: Engine | None = None
        # told of every batch written (the quality metrics), on the writer thread
        self.on_written: Callable[[Sequence[dict[str, Any]]], None] | None = None
        self._thread = threading.Thread(target=self._run, name="prediction-log", daemon=True)
        self._thread.start()

    # -- the request path -----------------------------------------------------------------------

    def record(
        self, request_id: str, model: str, version: int, pixels: np.ndarray, outputs: Any
    ) -> None:
        """Queue a classification's answer (about a microsecond: the rows are made by the
        writer); never blocks, never raises. Answers with neither output are not recorded."""
        if "probabilities" not in outputs and "logits" not in outputs:
            return
        if len(self._pending) >= self.capacity:
            self._drop("queue_full", len(pixels))
            return
        capture = self.capture_rate > 0 and random.random() < self.capture_rate
        # a copy: the batch may be a view of a body or a shared memory region that changes
        captured = pixels.copy() if capture and pixels.dtype == np.uint8 else None
        self._pending.append((request_id, model, version, time.time(), outputs, captured))

    @staticmethod
    def _rows(answer: Answer) -> list[dict[str, Any]]:
        """One row per image of an answer."""
        request_id, model, version, now, outputs, pixels = answer
        best = top1(outputs)
        if best is None:
            return []
        images = pixels if pixels is not None and pixels.shape[1:] == CAPTURED_SHAPE else None
        classes, probabilities = best
        return [
            {
                "request_id": request_id,
                "item": item,
                "model": model,
                "version": version,
                "time": now,
                "top1": index,
                "top1_probability": probability,
                "image": images[item].tobytes() if images is not None else None,
                "label": None,
                "labelled_at": None,
            }
            for item, (index, probability) in enumerate(
                zip(classes.tolist(), probabilities.tolist(), strict=True)
            )
        ]

    # -- the writer thread ----------------------------------------------------------------------

    @property
    def engine(self) -> Engine:
        """The database, connected (and its tables made) on first use; raises when it can't be."""
        if self._engine is None:
            self._engine = store.connect(self.url)
        return self._engine

    def _run(self) -> None:
        while True:
            self._wake.wait(FLUSH_INTERVAL_S)
            self._wake.clear()
            closing = self._closing  # read before draining: what came before it is written
            self._drain()
            self._maybe_prune()
            if closing:
                return

    def _drain(self) -> None:
        """Write what is pending, BATCH_ROWS per transaction."""
        pending = self._pending
        self._busy = True
        try:
            while pending:
                batch: list[dict[str, Any]] = []
                while pending and len(batch) < BATCH_ROWS:
                    batch += self._rows(pending.popleft())
                self._write(batch)
        finally:
            self._busy = False

    def _write(self, batch: list[dict[str, Any]]) -> None:
        if not batch:
            return
        try:
            store.insert(self.engine, batch)
        except Exception as exc:  # any database failure: the records are lost, counted
            self._drop("write_failed", len(batch), exc)
            return
        self.written.inc(len(batch))
        if self.on_written is not None:
            try:
                self.on_written(batch)
            except Exception:  # metrics must never stop the writer
                log.exception("prediction log: counting a written batch failed")

    def _maybe_prune(self) -> None:
        if time.monotonic() - self._pruned_at < PRUNE_INTERVAL_S:
            return
        self._pruned_at = time.monotonic()
        self.prune()

    def prune(self) -> int:
        """Retention: records past PREDICTION_LOG_MAX_AGE_S or PREDICTION_LOG_MAX_ROWS go."""
        try:
            return store.prune(self.engine, self.max_age_s, self.max_rows)
        except Exception as exc:
            log.warning("prediction log: pruning failed: %s", exc)
            return 0

    def _drop(self, reason: str, count: int, exc: Exception | None = None) -> None:
        self.dropped.labels(reason).inc(count)
        now = time.monotonic()
        if now - self._warned_at >= WARN_INTERVAL_S:  # at most once a minute
            self._warned_at = now
            why = f": {exc}" if exc else ""
            log.warning("prediction log: dropped %d record(s), %s%s", count, reason, why)

    # -- flushing and shutdown ------------------------------------------------------------------

    def flush(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the queued records to be written (or dropped)."""
        deadline = time.monotonic() + timeout_s
        self._wake.set()
        while self._pending or self._busy:
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


def open_prediction_log(settings: Settings, registry: CollectorRegistry) -> PredictionLog | None:
    """The log ``settings`` ask for (None with PREDICTION_LOG=false); the database is opened
    by the writer thread, so a dead one never delays start-up."""
    if not settings.prediction_log:
        return None
    url = store.database_url(settings.prediction_log_url, settings.data_dir)
    retention = (settings.prediction_log_max_age_s, settings.prediction_log_max_rows)
    return PredictionLog(
        url, registry, settings.prediction_log_queue, settings.capture_images, retention
    )
