"""Live model quality of one version over a window of the prediction log: what it predicts against
the card's reference (drift), and how right it is on labelled feedback (accuracy, confusion,
calibration). The log is aggregated in SQL (``prediction_store.window_counts``); this module only
turns a few hundred grouped rows into the answer, with ``service.core.quality``'s arithmetic."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from service.core import quality
from service.core.card import ModelCard

NOISE_TRIALS = 200  # sampled windows behind the noise floor
NOISE_QUANTILE = 0.95  # the floor: the score that sampling alone stays under 95 % of the time
MAX_CONFUSION_CLASSES = 100  # past this a confusion matrix is left out (its size is classes^2)


@dataclass(frozen=True)
class Distribution:
    """Served counts against the card's reference fractions, and their drift (JS distance)."""

    counts: list[int]
    reference: list[float] | None
    drift: float | None


@dataclass(frozen=True)
class Drift:
    score: float | None  # the larger of the two distributions' drift
    threshold: float
    drifting: bool  # score over both the threshold and the noise floor
    noise_floor: float  # the score sampling alone gives at this many predictions (95th pct)


@dataclass(frozen=True)
class Labelled:
    n: int
    correct: int
    accuracy: float | None
    interval: tuple[float, float]  # Wilson 95 %
    card_accuracy: float | None
    confusion: list[list[int]]  # [label][predicted]; empty past MAX_CONFUSION_CLASSES classes
    ece: float | None
    reliability: list[quality.ReliabilityBin]


@dataclass(frozen=True)
class MonitorReport:
    model: str
    version: int
    window_s: float
    since: float
    until: float
    predictions: int
    class_names: list[str]
    predicted_classes: Distribution
    top1_probability: Distribution
    drift: Drift
    labelled: Labelled
    calibration: dict[str, Any] | None


@dataclass(frozen=True)
class Window:
    """Which records: one version's, between ``since`` and ``until`` (Unix seconds)."""

    model: str
    version: int
    window_s: float
    until: float

    @property
    def since(self) -> float:
        return self.until - self.window_s


def card_reference(card: ModelCard) -> tuple[list[float] | None, list[float] | None]:
    """The card's class frequencies and probability histogram, each None when absent or not of
    this model's shape (an older card has no reference: no drift, not an error)."""
    block: Mapping[str, Any] = card.reference
    classes = _fractions(block.get("class_frequencies"), len(card.class_names))
    bins = block.get("bins", quality.BINS)
    histogram = _fractions(block.get("top1_probability_histogram"), quality.BINS)
    return classes, histogram if bins == quality.BINS else None


def _fractions(value: Any, size: int) -> list[float] | None:
    if not isinstance(value, list) or len(value) != size:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value] if sum(value) > 0 else None


def build_report(
    card: ModelCard,
    window: Window,
    rows: tuple[list[tuple[int, int, int]], list[tuple[int, int, int, int, float]]],
    threshold: float,
) -> MonitorReport:
    """The answer from ``prediction_store.window_counts``' grouped rows."""
    served, labelled_rows = rows
    n_classes = len(card.class_names)
    classes, bins = [0] * n_classes, [0] * quality.BINS
    for top1, bin_, count in served:
        if 0 <= top1 < n_classes:
            classes[top1] += count
        bins[min(max(bin_, 0), quality.BINS - 1)] += count
    predictions = sum(bins)
    class_reference, bin_reference = card_reference(card)
    predicted = _distribution(classes, class_reference, predictions)
    probability = _distribution(bins, bin_reference, predictions)
    return MonitorReport(
        model=window.model,
        version=window.version,
        window_s=window.window_s,
        since=window.since,
        until=window.until,
        predictions=predictions,
        class_names=list(card.class_names),
        predicted_classes=predicted,
        top1_probability=probability,
        drift=_drift(predicted, probability, predictions, threshold),
        labelled=_labelled(card, labelled_rows),
        calibration=dict(card.calibration) or None,
    )


def _distribution(counts: list[int], reference: list[float] | None, n: int) -> Distribution:
    drift = quality.js_distance(counts, reference) if reference is not None and n else None
    return Distribution(counts, reference, drift)


def _drift(classes: Distribution, bins: Distribution, n: int, threshold: float) -> Drift:
    scores = [d.drift for d in (classes, bins) if d.drift is not None]
    score = max(scores) if scores else None
    references = tuple(tuple(d.reference) for d in (classes, bins) if d.reference is not None)
    floor = noise_floor(references, n) if references and n else 0.0
    drifting = score is not None and score > threshold and score > floor
    return Drift(score, threshold, drifting, floor)


@lru_cache(maxsize=256)
def noise_floor(references: tuple[tuple[float, ...], ...], n: int) -> float:
    """The drift score that ``n`` predictions drawn from the references themselves stay under
    ``NOISE_QUANTILE`` of the time: NOISE_TRIALS seeded multinomial draws, scored as the monitor
    scores (the larger of the distributions' distances). Cached: the same few (reference, n)."""
    rng = np.random.default_rng(27)
    worst = np.zeros(NOISE_TRIALS)
    for reference in references:
        p = np.asarray(reference, dtype=np.float64)
        draws = rng.multinomial(n, p / p.sum(), size=NOISE_TRIALS)
        scores = [quality.js_distance(d.tolist(), reference) for d in draws]
        worst = np.maximum(worst, scores)
    return float(np.quantile(worst, NOISE_QUANTILE))


def _labelled(card: ModelCard, rows: Sequence[tuple[int, int, int, int, float]]) -> Labelled:
    n_classes = len(card.class_names)
    confusion = quality.confusion_matrix((), n_classes if n_classes <= MAX_CONFUSION_CLASSES else 0)
    sums = [[0, 0.0, 0] for _ in range(quality.BINS)]  # count, sum of confidence, correct
    for label, top1, bin_, count, confidence in rows:
        if confusion and 0 <= label < n_classes and 0 <= top1 < n_classes:
            confusion[label][top1] += count
        entry = sums[min(max(bin_, 0), quality.BINS - 1)]
        entry[0] += count
        entry[1] += confidence
        entry[2] += count if label == top1 else 0
    reliability = [
        quality.ReliabilityBin(int(k), s / k if k else 0.0, c / k if k else 0.0) for k, s, c in sums
    ]
    n = sum(b.count for b in reliability)
    correct = int(sum(c for _, _, c in sums))
    ece = sum(b.count / n * abs(b.accuracy - b.mean_confidence) for b in reliability) if n else None
    card_accuracy = _number(card.metrics.get("test_accuracy"))
    return Labelled(
        n=n,
        correct=correct,
        accuracy=correct / n if n else None,
        interval=quality.wilson_interval(correct, n),
        card_accuracy=card_accuracy,
        confusion=confusion,
        ece=ece,
        reliability=reliability,
    )


def _number(value: Any) -> float | None:
    """A finite JSON number as a float, else None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None
