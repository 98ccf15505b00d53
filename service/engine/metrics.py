"""Every Prometheus metric, defined once; each app gets its own registry (tests build many apps)."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from service.core.processes import sibling
from service.engine.batcher import BatchStats
from service.engine.metric_files import fold_dead, reading

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

# (model, version, provider its session runs on, a requested provider missing); read per scrape.
ProviderUse = Callable[[], list[tuple[str, int, str, bool]]]

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
LAG_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    """Every metric the service exports, on its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "http_requests",
            "HTTP requests by route template, method and status code.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.request_latency = Histogram(
            "http_request_duration_seconds",
            "Time from the request's arrival to the end of its response.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.grpc_requests = Counter(
            "grpc_requests",
            "gRPC calls by method and status code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.grpc_latency = Histogram(
            "grpc_request_duration_seconds",
            "Time a gRPC call spent in its handler.",
            ["method"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.loop_lag = Histogram(
            "event_loop_lag_seconds",
            "How late the event loop ran a timer: time it spent on one thing while every other "
            "request waited.",
            buckets=LAG_BUCKETS_S,
            registry=self.registry,
        )
        self._add_model_metrics()
        # Labelled children kept by their labels, so a request or a batch costs no ``labels()``
        # lookups (bounded as the series are: routes, methods, codes, versions).
        self._children: dict[tuple[object, ...], tuple[Any, ...]] = {}

    def _add_model_metrics(self) -> None:
        """What the models do: images, runs, batch sizes, dropped requests."""
        self.images = Counter(
            "images_classified",
            "Images (tensor rows) run through a model.",
            ["model", "version"],
            registry=self.registry,
        )
        self.inference = Histogram(
            "inference_duration_seconds",
            "Time onnxruntime spent in one session.run.",
            ["model", "version"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "inference_batch_size",
            "Rows per session.run.",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.dropped = _dropped_counter(self.registry)
        self.batch_requests = Histogram(
            "inference_batch_requests",
            "Requests whose images shared one session.run (dynamic batching).",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )

    def track_providers(self, source: ProviderUse) -> None:
        """Export which execution provider each loaded version runs on, read at scrape time (so
        unloaded versions disappear instead of leaving stale series)."""
        self.registry.register(_ProviderCollector(source))

    def observe_request(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        """One HTTP request, by its route template (the fast path's and every route's)."""
        count, latency = self._labelled(
            ("http", endpoint, method, status),
            lambda: (
                self.requests.labels(endpoint, method, str(status)),
                self.request_latency.labels(endpoint),
            ),
        )
        count.inc()
        latency.observe(seconds)

    def observe_grpc_call(self, method: str, code: str, seconds: float) -> None:
        """One gRPC call, by its method and status code name."""
        count, latency = self._labelled(
            ("grpc", method, code),
            lambda: (self.grpc_requests.labels(method, code), self.grpc_latency.labels(method)),
        )
        count.inc()
        latency.observe(seconds)

    def observe_batch(self, model: str, version: int, stats: BatchStats) -> None:
        """One session.run: its rows, the requests it served, and its time (or, with no rows,
        the requests dropped before a run)."""
        labels = (model, str(version))
        if not stats.rows:
            if stats.timed_out:
                self.dropped.labels(*labels, "timeout").inc(stats.timed_out)
            if stats.cancelled:
                self.dropped.labels(*labels, "cancelled").inc(stats.cancelled)
            return
        images, inference, batch_size, batch_requests = self._labelled(
            ("batch", model, version),
            lambda: tuple(
                metric.labels(*labels)
                for metric in (self.images, self.inference, self.batch_size, self.batch_requests)
            ),
        )
        images.inc(stats.rows)
        inference.observe(stats.seconds)
        batch_size.observe(stats.rows)
        batch_requests.observe(stats.requests)

    def _labelled(
        self, key: tuple[object, ...], make: Callable[[], tuple[Any, ...]]
    ) -> tuple[Any, ...]:
        """The children ``make`` labels, made once per ``key``; a race between threads (the
        batchers) makes them twice, and ``labels()`` hands both the same ones."""
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = make()
        return children

    async def watch_loop_lag(self, interval_s: float) -> None:
        """Until cancelled: sleep ``interval_s`` and record how much later than that the loop
        woke us (anything that held it meanwhile held every request)."""
        loop = asyncio.get_running_loop()
        while True:
            due = loop.time() + interval_s
            await asyncio.sleep(interval_s)
            self.loop_lag.observe(max(0.0, loop.time() - due))

    def render(self) -> bytes:
        """The exposition; with WORKERS > 1 (PROMETHEUS_MULTIPROC_DIR set) every worker's
        counters and histograms summed, and this worker's read-at-scrape gauges."""
        folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        if not folder:
            return generate_latest(self.registry)
        combined = CollectorRegistry(auto_describe=False)
        combined.register(_AllWorkers(Path(folder), self.registry))
        return generate_latest(combined)


def _dropped_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "inference_requests_dropped",
        "Requests dropped before reaching the model: reason timeout (their timeout ran out "
        "while queued) or cancelled (the client went away while they were queued).",
        ["model", "version", "reason"],
        registry=registry,
    )


class _ProviderCollector(Collector):
    def __init__(self, source: ProviderUse) -> None:
        self.source = source

    def collect(self) -> Iterator[GaugeMetricFamily]:
        provider = GaugeMetricFamily(
            "model_execution_provider",
            "1 for the onnxruntime execution provider each loaded model version runs on.",
            labels=["model", "version", "provider"],
        )
        fallback = GaugeMetricFamily(
            "model_provider_fallback",
            "1 when a loaded model version lacks a provider PROVIDERS asked for (e.g. CUDA "
            "requested, running on the CPU), else 0.",
            labels=["model", "version"],
        )
        for model, version, name, fell_back in self.source():
            provider.add_metric([model, str(version), name], 1)
            fallback.add_metric([model, str(version)], int(fell_back))
        yield provider
        yield fallback


_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")


class _AllWorkers(Collector):
    """prometheus-client's multiprocess collector over every worker's files (a dead worker's
    counters and histograms folded into the archives first), then what only this worker's
    registry holds: the gauges its collectors compute at scrape time (providers, the monitor's
    drift and accuracy, each worker's own refresh)."""

    def __init__(self, folder: Path, local: CollectorRegistry) -> None:
        self.folder = folder
        self.local = local

    def collect(self) -> Iterator[Metric]:
        for path in self.folder.iterdir():  # a dead worker's live gauges leave the sums
            match = _LIVE_GAUGE_FILE.match(path.name)
            if match and not sibling(int(match.group(1))):
                pid = int(match.group(1))
                multiprocess.mark_process_dead(pid, str(self.folder))  # type: ignore[no-untyped-call]
        fold_dead(self.folder, sibling)
        every = multiprocess.MultiProcessCollector(None, str(self.folder))  # type: ignore[no-untyped-call]
        with reading(self.folder, sibling):
            summed: list[Metric] = list(every.collect())  # type: ignore[no-untyped-call]
        names = {family.name for family in summed}
        yield from summed
        for family in self.local.collect():
            if family.name not in names:
                yield family
