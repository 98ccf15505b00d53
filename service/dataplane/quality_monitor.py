"""The monitor's answers, computed off the event loop and shared: one database query per (model,
version, window) per ``CACHE_S``, however many clients ask, on a small bounded pool of its own
(past ``MAX_WAITING`` queued answers a request gets 503 rather than a queue without end), and
within a share of the machine (``QueryBudget``: a client choosing a new window each call buys a
query each, 0.8 s at the log's cap). Also refreshes the Prometheus quality gauges from the
database every ``MONITOR_REFRESH_S``."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from service.core import quality
from service.core.card import ModelCard
from service.core.errors import InvalidInput, Overloaded, PredictionLogOff
from service.dataplane import prediction_store as store
from service.dataplane.monitor import MonitorReport, Window, build_report
from service.dataplane.prediction_log import PredictionLog
from service.dataplane.quality_metrics import MAX_VERSIONS, QualityCollector
from service.engine.thread_policy import ThreadScheduling
from service.engine.work_pool import WorkPool

log = logging.getLogger(__name__)

CACHE_S = 1.0  # an answer is reused this long (a flood of calls costs one query)
# Past the budget, a window answered within this long is answered as it was (its ``until`` says
# when): a dashboard's usual windows, and the gauges' (refreshed every MONITOR_REFRESH_S), are
# still answered while a client asking a new window each call has spent the budget.
STALE_S = 60.0
MAX_WINDOW_S = 30 * 86400.0  # the log's default retention
MAX_CACHED = 64  # distinct (model, version, window) answers kept
WARN_INTERVAL_S = 60.0  # a failing refresh is logged at most once a minute
REFRESH_SHARE = 0.01  # the most of the time the gauges' refresh may spend querying
THREADS, MAX_WAITING = 2, 8  # the monitor's own pool: queries never hold up request decoding
QUERY_SHARE = 0.25  # the most of one core that the queries of requests take, on average
QUERY_BURST_S = 2.0  # the query time they may take at once before the share holds them
Key = tuple[str, int, float]
T = TypeVar("T")
# (model, version, card) of every version whose gauges the refresh keeps
Targets = Callable[[], Sequence[tuple[str, int, ModelCard]]]


def check_window(window_s: float) -> float:
    """``window_s`` when it is a usable window (0 < window <= 30 days), else 400."""
    if not math.isfinite(window_s) or not 0 < window_s <= MAX_WINDOW_S:
        raise InvalidInput(f"window_s must be over 0 and at most {MAX_WINDOW_S:.0f} (30 days)")
    return window_s


class QueryBudget:
    """A leaky bucket of query time: every query's seconds are owed when it ends, and the debt
    drains at ``share`` seconds a second; while more than ``burst_s`` is owed a request's new
    query is refused (a cached answer is free, the gauges' refresh is never refused)."""

    def __init__(
        self, share: float, burst_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.share, self.burst_s, self._clock = share, burst_s, clock
        self._owed, self._at = 0.0, clock()
        self._lock = threading.Lock()  # spent on the pool's threads, checked on the loop

    def _drained(self) -> float:
        now = self._clock()
        self._owed = max(0.0, self._owed - (now - self._at) * self.share)
        self._at = now
        return self._owed

    def wait_s(self) -> float:
        """How long until a new query may start (0: now)."""
        with self._lock:
            return max(0.0, self._drained() - self.burst_s) / self.share

    def spend(self, seconds: float) -> None:
        with self._lock:
            self._owed = self._drained() + seconds


class QualityMonitor:
    """Monitor answers for one app (None log: every answer is 503, PREDICTION_LOG is off)."""

    def __init__(
        self,
        prediction_log: PredictionLog | None,
        registry: CollectorRegistry,
        class_names: Callable[[str, int], Sequence[str]],
        threshold: float,
        scheduling: ThreadScheduling = "batch",
    ) -> None:
        self.log, self.threshold = prediction_log, threshold
        self.collector = QualityCollector(class_names, registry)
        registry.register(self.collector)
        if prediction_log is not None:
            prediction_log.on_written = self.collector.observe
        self._pool = WorkPool(THREADS, MAX_WAITING, scheduling)
        self.budget = QueryBudget(QUERY_SHARE, QUERY_BURST_S)
        self._answers: dict[Key, tuple[float, asyncio.Future[MonitorReport]]] = {}
        self._warned_at = -WARN_INTERVAL_S

    async def report(
        self, name: str, version: int, card: ModelCard, window_s: float, budgeted: bool = True
    ) -> MonitorReport:
        """The monitor answer for a version over the last ``window_s`` seconds; a new query
        past the ``budget`` is 503 unless not ``budgeted`` (the gauges' own refresh)."""
        prediction_log = self.log
        if prediction_log is None:
            raise PredictionLogOff(
                "the monitor reads the prediction log, which is off: set PREDICTION_LOG=true"
            )
        key = (name, version, check_window(window_s))
        now = time.monotonic()
        cached = self._answers.get(key)
        if cached is not None and _reusable(cached, now):
            return await asyncio.shield(cached[1])
        wait_s = self.budget.wait_s() if budgeted else 0.0
        if wait_s > 0:
            if cached is not None and _answered(cached, now, STALE_S):
                return cached[1].result()
            raise Overloaded(
                f"the monitor's queries have taken their share of the machine; a new window "
                f"can be computed in {math.ceil(wait_s)} s (a window answered within the last "
                f"{STALE_S:.0f} s is answered as it was then)"
            )
        self._forget_old(now)
        answer = asyncio.ensure_future(self._bounded(prediction_log, card, name, version, window_s))
        self._answers[key] = (now, answer)
        return await asyncio.shield(answer)

    async def _bounded(
        self, prediction_log: PredictionLog, card: ModelCard, name: str, version: int, w: float
    ) -> MonitorReport:
        try:
            return await self._pool.run(self._compute, prediction_log, card, name, version, w)
        except Overloaded:
            raise Overloaded("the monitor is computing too many answers; retry shortly") from None

    async def on_its_pool(self, work: Callable[..., T], *args: object) -> T:
        """Other work on the prediction log's database (feedback) on the monitor's bounded pool,
        not on the loop's default executor, which the repository's polls and the workers'
        state share (a feedback call may wait 2 s for queued records): 503 past its bound."""
        try:
            return await self._pool.run(work, *args)
        except Overloaded:
            raise Overloaded("the prediction log is busy with other calls; retry shortly") from None

    def _compute(
        self, prediction_log: PredictionLog, card: ModelCard, name: str, version: int, w: float
    ) -> MonitorReport:
        window = Window(name, version, w, time.time())
        start = time.perf_counter()
        try:
            rows = store.window_counts(
                prediction_log.engine, name, version, window.since, window.until, quality.BINS
            )
        except sa.exc.OperationalError as exc:  # locked, gone, or its folder cannot be made
            raise Overloaded(f"the prediction log's database cannot be read ({exc.orig})") from None
        finally:
            self.budget.spend(time.perf_counter() - start)
        return build_report(card, window, rows, self.threshold)

    def _forget_old(self, now: float) -> None:
        answers = self._answers
        for key, entry in list(answers.items()):
            if entry[1].done() and not _answered(entry, now, STALE_S):
                del answers[key]
        while len(answers) >= MAX_CACHED:  # the oldest go (their callers still get them)
            del answers[min(answers, key=lambda k: answers[k][0])]

    async def refresh(self, targets: Targets, window_s: float) -> None:
        """Set the gauges of every target version from the database (errors logged, not raised)."""
        chosen = list(targets())[:MAX_VERSIONS]
        for name, version, card in chosen:
            try:
                report = await self.report(name, version, card, window_s, budgeted=False)
                self.collector.set_report(report)
            except Exception as exc:  # a dead database: the gauges keep their last values
                if time.monotonic() - self._warned_at >= WARN_INTERVAL_S:
                    self._warned_at = time.monotonic()
                    log.warning("monitor refresh of %s v%d failed: %s", name, version, exc)
        self.collector.retain((name, version) for name, version, _ in chosen)

    async def watch(self, targets: Targets, window_s: float, interval_s: float) -> None:
        """``refresh`` every ``interval_s`` until cancelled, or less often when a refresh takes
        long: its queries read every record of the window (0.8 us a record on SQLite here, so
        0.8 s at the 1,000,000-record cap), and the pause after one stretches to keep them
        under REFRESH_SHARE of the time, which a busy server's requests would pay for."""
        while True:
            start = time.monotonic()
            await self.refresh(targets, window_s)
            await asyncio.sleep(refresh_pause(interval_s, time.monotonic() - start))

    def close(self) -> None:
        self._pool.close()


def refresh_pause(interval_s: float, spent_s: float) -> float:
    """The pause after a refresh that took ``spent_s``: ``interval_s``, or longer, so that
    refreshing takes at most REFRESH_SHARE of the time."""
    return max(interval_s, spent_s * (1 / REFRESH_SHARE - 1))


def _reusable(entry: tuple[float, asyncio.Future[MonitorReport]], now: float) -> bool:
    """Still running, or answered (not failed) within CACHE_S."""
    return not entry[1].done() or _answered(entry, now, CACHE_S)


def _answered(
    entry: tuple[float, asyncio.Future[MonitorReport]], now: float, within: float
) -> bool:
    """Answered, not failed, by a query started within ``within`` seconds."""
    started, answer = entry
    done = answer.done() and not answer.cancelled() and answer.exception() is None
    return done and now - started < within
