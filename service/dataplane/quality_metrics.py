"""Model quality in Prometheus, in bounded labels (model, version, class from the card's names).

Two sources: the prediction log's writer thread hands each written batch to ``observe`` (the
top-1 probability histogram and predicted-class counters, off the request path; prometheus-client
metrics, so with WORKERS > 1 they are written to the shared folder and summed over the workers
as the other counters are), and the monitor's periodic refresh sets the drift and accuracy
gauges from the shared database (``set_report``: each worker's own, read at scrape time).
Series are capped: at most ``MAX_VERSIONS`` model versions and ``MAX_CLASSES`` class labels per
version (the rest are counted as class ``other``).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.dataplane.monitor import MonitorReport
from service.dataplane.prediction_store import Row

log = logging.getLogger(__name__)

MAX_VERSIONS = 32  # (model, version) pairs with series; more are not observed (logged once)
MAX_CLASSES = 100  # class labels per version; higher class indexes count as "other"
BUCKETS = tuple(round(0.1 * k, 1) for k in range(1, 11))  # top-1 probability, 0.1 .. 1.0
Key = tuple[str, int]


@dataclass
class _Observed:
    """A version's series: its class names, its histogram child, its counters by class index."""

    class_names: list[str]
    top1: Any  # the histogram's child for the version
    classes: dict[int, Any] = field(default_factory=dict)  # class index -> counter child

    def class_label(self, index: int) -> str:
        """The ``class`` label of a class index: its name, or "other" past ``MAX_CLASSES``."""
        return "other" if index >= MAX_CLASSES else _name(self.class_names, index)


class QualityCollector(Collector):
    """The quality metrics of one app's ``registry`` (the histogram and counters on it; the
    gauges from this collector, which the caller registers); thread-safe (writer thread, loop,
    scrapes)."""

    def __init__(
        self, class_names: Callable[[str, int], Sequence[str]], registry: CollectorRegistry
    ) -> None:
        self._class_names = class_names
        self._lock = threading.Lock()
        self._observed: dict[Key, _Observed] = {}
        self._reports: dict[Key, MonitorReport] = {}
        self._warned = False
        self._top1 = Histogram(
            "model_top1_probability",
            "Top-1 probability of logged predictions (every worker's).",
            ["model", "version"],
            buckets=BUCKETS,
            registry=registry,
        )
        self._classes = Counter(
            "model_predicted_class",
            "Logged predictions by top-1 class (every worker's; classes past 100 are 'other').",
            ["model", "version", "class"],
            registry=registry,
        )

    def observe(self, rows: Iterable[Row]) -> None:
        """Count a written batch of prediction log rows (the writer thread, after the insert)."""
        grouped: dict[Key, tuple[list[int], list[float]]] = {}
        for _, _, model, version, _, index, p_top1, _ in rows:  # prediction_store.COLUMNS
            top1, probability = grouped.setdefault((model, version), ([], []))
            top1.append(index)
            probability.append(p_top1)
        for key, (top1, probability) in grouped.items():
            series = self._series(key)
            if series is None:
                continue
            _observe_all(series.top1, probability)
            classes = np.minimum(np.asarray(top1, dtype=np.int64), MAX_CLASSES).clip(0)
            counts = np.bincount(classes, minlength=MAX_CLASSES + 1)
            for index in np.flatnonzero(counts).tolist():
                self._class_counter(key, series, index).inc(int(counts[index]))

    def _class_counter(self, key: Key, series: _Observed, index: int) -> Any:
        child = series.classes.get(index)
        if child is None:
            name = series.class_label(index)
            child = series.classes[index] = self._classes.labels(key[0], str(key[1]), name)
        return child

    def _series(self, key: Key) -> _Observed | None:
        series = self._observed.get(key)
        if series is not None:
            return series
        if len(self._observed) >= MAX_VERSIONS:
            if not self._warned:
                self._warned = True
                log.warning("quality metrics: more than %d model versions; %s not observed",
                            MAX_VERSIONS, key)  # fmt: skip
            return None
        try:
            names = list(self._class_names(*key))[:MAX_CLASSES]
        except Exception:  # the version is gone: its index stands in for a name
            names = []
        series = _Observed(names, self._top1.labels(key[0], str(key[1])))
        with self._lock:
            return self._observed.setdefault(key, series)

    def set_report(self, report: MonitorReport) -> None:
        """The drift and accuracy gauges of a version, from a monitor answer."""
        with self._lock:
            if len(self._reports) < MAX_VERSIONS or (report.model, report.version) in self._reports:
                self._reports[(report.model, report.version)] = report

    def retain(self, keys: Iterable[Key]) -> None:
        """Forget the versions not in ``keys`` (unloaded ones), so their series go (with
        WORKERS > 1 the shared folder keeps what they counted: prometheus-client removes no
        series there, and warns at each try)."""
        kept = set(keys)
        with self._lock:
            self._reports = {k: v for k, v in self._reports.items() if k in kept}
            gone = {k: v for k, v in self._observed.items() if k not in kept}
            self._observed = {k: v for k, v in self._observed.items() if k in kept}
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return
        for (model, version), series in gone.items():
            self._top1.remove(model, str(version))
            for index in series.classes:
                self._classes.remove(model, str(version), series.class_label(index))

    def collect(self) -> Iterator[Any]:
        with self._lock:
            reports = list(self._reports.values())
        yield from _report_families(reports)


def _name(names: list[str], index: int) -> str:
    return names[index] if index < len(names) else str(index)


def _report_families(reports: list[MonitorReport]) -> Iterator[Any]:
    def gauge(name: str, text: str, extra: Sequence[str] = ()) -> GaugeMetricFamily:
        return GaugeMetricFamily(name, text, labels=["model", "version", *extra])

    drift = gauge("model_drift_score", "Drift (JS distance) from the card's reference.", ["kind"])
    drifting = gauge("model_drifting", "1 when the drift score is over threshold and noise floor.")
    accuracy = gauge("model_labelled_accuracy", "Accuracy on labelled feedback in the window.")
    upper = gauge("model_labelled_accuracy_upper", "Wilson 95 % upper bound of that accuracy.")
    labelled = gauge("model_labelled_predictions", "Labelled predictions in the window.")
    card = gauge("model_card_accuracy", "The card's test accuracy, to compare against.")
    for r in reports:
        labels = [r.model, str(r.version)]
        kinds = ("class", r.predicted_classes.drift), ("probability", r.top1_probability.drift)
        for kind, value in (*kinds, ("score", r.drift.score)):
            if value is not None:
                drift.add_metric([*labels, kind], value)
        drifting.add_metric(labels, float(r.drift.drifting))
        labelled.add_metric(labels, r.labelled.n)
        if r.labelled.accuracy is not None:
            accuracy.add_metric(labels, r.labelled.accuracy)
            upper.add_metric(labels, r.labelled.interval[1])
        if r.labelled.card_accuracy is not None:
            card.add_metric(labels, r.labelled.card_accuracy)
    yield from (drift, drifting, accuracy, upper, labelled, card)


def _observe_all(child: Any, values: Sequence[float]) -> None:
    """``child.observe`` of every value, in one increment a bucket: a call per value cost the
    log's writer thread 0.9 us a row (1.9 with WORKERS > 1, a shared file written each time).
    Through the histogram's own bucket values where they are as prometheus-client keeps them,
    else one call a value."""
    bounds, buckets, total = (
        getattr(child, n, None) for n in ("_upper_bounds", "_buckets", "_sum")
    )
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for value in values:
            child.observe(value)
        return
    array = np.asarray(values, dtype=np.float64)
    total.inc(float(array.sum()))
    counts = np.bincount(np.searchsorted(bounds, array, side="left"), minlength=len(bounds) + 1)
    for index in np.flatnonzero(counts[: len(bounds)]).tolist():  # past the last: NaN, no bucket
        buckets[index].inc(int(counts[index]))
