"""Triton's metric names on ``/metrics``, so the dashboards, alerts and autoscalers written for
Triton (``nv_inference_request_success``, ``nv_inference_queue_duration_us``, ...) read this
server unchanged.

They are not counted a second time: each is read at scrape time from what the statistics
extension already counts per model version (``service.engine.statistics``), summed over the
worker processes by the ``source`` given, and from the host's CPU and memory (psutil), as
Triton reads them from ``/proc``; the CPU's share is sampled at most every ``CPU_SAMPLE_S``, so
one client's scrape does not shorten the interval the next one (the operator's) reads. Like
Triton's, the counts start at a version's load, so a reloaded version starts again from zero.
GPU metrics (``nv_gpu_*``) are not served.

Triton's counters are exposed under their exact names, typed ``gauge``: prometheus-client writes
every counter's samples as ``<name>_total``, which Triton's names lack; PromQL's ``rate`` and
``increase`` read them alike.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence

import psutil
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.engine.statistics import FAILURES, VersionStatistics

LABELS = ["model", "version"]
CPU_SAMPLE_S = 5.0  # the least time between two samples of nv_cpu_utilization
Read = Callable[[VersionStatistics], float]


def _count(key: str) -> Read:
    return lambda s: s.durations[key].count


def _us(key: str) -> Read:
    """A duration of the statistics (nanoseconds) in Triton's unit, microseconds."""
    return lambda s: s.durations[key].ns // 1000


# (metric, help, what it reads from a version's statistics): Triton's counters, its words
COUNTS: tuple[tuple[str, str, Read], ...] = (
    (
        "nv_inference_request_success",
        "Number of successful inference requests, all batch sizes",
        _count("success"),
    ),
    (
        "nv_inference_count",
        "Number of inferences performed (does not include cached requests)",
        lambda s: s.inference_count,
    ),
    (
        "nv_inference_exec_count",
        "Number of model executions performed (does not include cached requests)",
        lambda s: s.execution_count,
    ),
    (
        "nv_inference_request_duration_us",
        "Cumulative inference request duration in microseconds (includes cached requests)",
        _us("success"),
    ),
    (
        "nv_inference_queue_duration_us",
        "Cumulative inference queuing duration in microseconds (includes cached requests)",
        _us("queue"),
    ),
    (
        "nv_inference_compute_input_duration_us",
        "Cumulative compute input duration in microseconds (does not include cached requests)",
        _us("compute_input"),
    ),
    (
        "nv_inference_compute_infer_duration_us",
        "Cumulative compute inference duration in microseconds (does not include cached requests)",
        _us("compute_infer"),
    ),
    (
        "nv_inference_compute_output_duration_us",
        "Cumulative inference compute output duration in microseconds (does not include cached "
        "requests)",
        _us("compute_output"),
    ),
)
CACHE_COUNTS: tuple[tuple[str, str, Read], ...] = (
    (
        "nv_cache_num_hits_per_model",
        "Number of response cache hits per model",
        _count("cache_hit"),
    ),
    (
        "nv_cache_num_misses_per_model",
        "Number of response cache misses per model",
        _count("cache_miss"),
    ),
    (
        "nv_cache_hit_duration_per_model",
        "Total cache hit duration per model, in microseconds",
        _us("cache_hit"),
    ),
    (
        "nv_cache_miss_duration_per_model",
        "Total cache miss (insert + lookup) duration per model, in microseconds",
        _us("cache_miss"),
    ),
)


def cpu_seconds() -> tuple[float, float]:
    """The host's CPU time so far, (busy, all) in seconds: busy is all less idle and iowait,
    as psutil's ``cpu_percent`` counts it (read here, not there: its interval is process-wide,
    restarted by any caller)."""
    times = psutil.cpu_times()
    # Linux counts guest time in user and nice as well: taken out of the sum, as psutil does
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


class CpuSampler:
    """The host's busy share over the last interval of at least ``interval_s``: a scrape within
    ``interval_s`` of the last sample reads that sample, so however often anyone scrapes, each
    value covers ``interval_s`` or more (psutil's ``cpu_percent()`` measured since the last
    scrape: a client scraping 50 ms before Prometheus made Prometheus read those 50 ms)."""

    def __init__(
        self,
        interval_s: float = CPU_SAMPLE_S,
        clock: Callable[[], float] = time.monotonic,
        read: Callable[[], tuple[float, float]] = cpu_seconds,
    ) -> None:
        self._interval_s, self._clock, self._read = interval_s, clock, read
        self._lock = threading.Lock()  # scrapes render on threads of their own
        self._at, self._times = clock(), read()  # the first sample covers the time since
        self._value: float | None = None

    def utilization(self) -> float:
        """The busy share (0-1) of the latest sample, taking one if it is ``interval_s`` old."""
        with self._lock:
            now = self._clock()
            if self._value is None or now - self._at >= self._interval_s:
                times = self._read()
                busy, total = (new - old for new, old in zip(times, self._times, strict=True))
                if total > 0 or self._value is None:
                    self._value = min(1.0, max(0.0, busy / total)) if total > 0 else 0.0
                    self._at, self._times = now, times
            return self._value


class TritonMetrics(Collector):
    """``source()``: every loaded version's statistics (the whole worker group's);
    ``cached(name)``: whether the response cache serves that model (its ``nv_cache_*``);
    ``cpu``: the host's CPU sampler (one per process will do)."""

    def __init__(
        self,
        source: Callable[[], Sequence[VersionStatistics]],
        cached: Callable[[str], bool],
        cpu: CpuSampler | None = None,
    ) -> None:
        self.source, self.cached = source, cached
        self.cpu = CpuSampler() if cpu is None else cpu

    def collect(self) -> Iterator[Metric]:
        stats = self.source()
        yield from _counters(COUNTS, stats)
        yield from _counters(CACHE_COUNTS, [s for s in stats if self.cached(s.name)])
        failure = GaugeMetricFamily(
            "nv_inference_request_failure",
            "Number of failed inference requests, all batch sizes",
            labels=[*LABELS, "reason"],
        )
        pending = GaugeMetricFamily(
            "nv_inference_pending_request_count",
            "Instantaneous number of pending requests awaiting execution per-model.",
            labels=LABELS,
        )
        for s in stats:
            for reason in FAILURES:
                failure.add_metric([s.name, s.version, reason], s.failures.get(reason, 0))
            pending.add_metric([s.name, s.version], s.pending)
        yield failure
        yield pending
        yield from _host(self.cpu.utilization())


def _counters(
    kinds: Sequence[tuple[str, str, Read]],
    stats: Sequence[VersionStatistics],
) -> Iterator[Metric]:
    for name, text, read in kinds:
        family = GaugeMetricFamily(name, text, labels=LABELS)
        for s in stats:
            family.add_metric([s.name, s.version], read(s))
        yield family


def _host(cpu_utilization: float) -> Iterator[Metric]:
    """The host's CPU and memory, as Triton reports them (used: total less available)."""
    memory = psutil.virtual_memory()
    yield GaugeMetricFamily(
        "nv_cpu_utilization",
        "CPU utilization rate [0.0 - 1.0]",
        value=cpu_utilization,  # over the latest CPU_SAMPLE_S or more
    )
    yield GaugeMetricFamily(
        "nv_cpu_memory_total_bytes", "CPU total memory (RAM), in bytes", value=memory.total
    )
    yield GaugeMetricFamily(
        "nv_cpu_memory_used_bytes",
        "CPU used memory (RAM), in bytes",
        value=memory.total - memory.available,
    )
