"""Model quality from served predictions: the arithmetic shared by the export (which records a
reference on the test split in the card) and the service (which compares traffic against it).

Standard library only, so the training package computes a card's reference with the very
functions the monitor later compares against. Probabilities are binned in ``BINS`` equal-width
bins over [0, 1]; the same bins serve the histogram, the reliability diagram and the ECE.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypedDict

BINS = 10
# Added to every bin before comparing distributions, so an empty bin on one side (a class never
# predicted in a short window) gives a finite, bounded score instead of a log of zero.
SMOOTHING = 0.5


def bin_of(probability: float, bins: int = BINS) -> int:
    """The bin of ``probability`` (1.0 falls in the last one; out-of-range values are clipped)."""
    return min(bins - 1, max(0, int(probability * bins)))


def histogram(probabilities: Iterable[float], bins: int = BINS) -> list[int]:
    """Counts of ``probabilities`` per equal-width bin over [0, 1]."""
    counts = [0] * bins
    for p in probabilities:
        counts[bin_of(p, bins)] += 1
    return counts


def class_counts(classes: Iterable[int], n_classes: int) -> list[int]:
    """How often each class index occurs (indices outside ``range(n_classes)`` are ignored)."""
    counts = [0] * n_classes
    for c in classes:
        if 0 <= c < n_classes:
            counts[c] += 1
    return counts


def fractions(counts: Sequence[float]) -> list[float]:
    """``counts`` normalised to sum to one (all zeros stay zeros)."""
    total = float(sum(counts))
    return [c / total if total else 0.0 for c in counts]


def js_distance(observed_counts: Sequence[float], reference: Sequence[float]) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between observed counts and a reference
    distribution, after ``SMOOTHING`` pseudo-counts per bin on the observed side.

    Symmetric and bounded, unlike KL or PSI, so one threshold means the same for the class
    distribution and the probability histogram.
    """
    if len(observed_counts) != len(reference):
        raise ValueError(f"{len(observed_counts)} observed bins against {len(reference)}")
    p = fractions([c + SMOOTHING for c in observed_counts])
    q = fractions([max(r, 0.0) for r in reference])
    m = [(a + b) / 2 for a, b in zip(p, q, strict=True)]

    def kl(x: Sequence[float]) -> float:
        return sum(a * math.log2(a / b) for a, b in zip(x, m, strict=True) if a > 0)

    return math.sqrt(max(0.0, (kl(p) + kl(q)) / 2))


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95% by default); (0, 1) when ``n`` is 0."""
    if n <= 0:
        return (0.0, 1.0)
    phat = successes / n
    denominator = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / denominator
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class ReliabilityBin:
    """One bin of a reliability diagram: how many predictions, how confident, how often right."""

    count: int
    mean_confidence: float
    accuracy: float


def reliability(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = BINS
) -> list[ReliabilityBin]:
    """Per-bin count, mean confidence and accuracy of top-1 predictions."""
    if len(confidences) != len(correct):
        raise ValueError(f"{len(confidences)} confidences against {len(correct)} outcomes")
    sums = [[0, 0.0, 0] for _ in range(bins)]
    for p, ok in zip(confidences, correct, strict=True):
        entry = sums[bin_of(p, bins)]
        entry[0] += 1
        entry[1] += p
        entry[2] += int(ok)
    return [ReliabilityBin(int(n), s / n if n else 0.0, k / n if n else 0.0) for n, s, k in sums]


def expected_calibration_error(
    confidences: Sequence[float], correct: Sequence[bool], bins: int = BINS
) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins."""
    total = len(confidences)
    if total == 0:
        return 0.0
    return sum(
        b.count / total * abs(b.accuracy - b.mean_confidence)
        for b in reliability(confidences, correct, bins)
    )


def confusion_matrix(pairs: Iterable[tuple[int, int]], n_classes: int) -> list[list[int]]:
    """``matrix[label][predicted]`` counts of (label, predicted) pairs inside the class range."""
    matrix = [[0] * n_classes for _ in range(n_classes)]
    for label, predicted in pairs:
        if 0 <= label < n_classes and 0 <= predicted < n_classes:
            matrix[label][predicted] += 1
    return matrix


class Reference(TypedDict):
    """The card's ``reference`` block (JSON): what the model predicts on a labelled split."""

    n: int
    bins: int
    class_frequencies: list[float]
    top1_probability_histogram: list[float]


def reference(top1: Sequence[int], top1_probability: Sequence[float], n_classes: int) -> Reference:
    """The reference for the monitor's drift score to compare served traffic against, as
    fractions of the split's predictions."""
    return {
        "n": len(top1),
        "bins": BINS,
        "class_frequencies": fractions(class_counts(top1, n_classes)),
        "top1_probability_histogram": fractions(histogram(top1_probability)),
    }
