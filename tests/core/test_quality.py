"""The quality arithmetic against hand-computed values and its edge cases."""

from __future__ import annotations

import math
import random

import pytest

from service.core import quality


def test_histogram_bins_edges_and_clips() -> None:
    counts = quality.histogram([0.0, 0.05, 0.1, 0.99, 1.0, 1.5, -0.2])
    assert counts == [3, 1, 0, 0, 0, 0, 0, 0, 0, 3]


def test_js_distance_zero_for_same_distribution_and_bounded() -> None:
    ref = [0.1] * 10
    assert quality.js_distance([1000] * 10, ref) < 1e-3
    far = quality.js_distance([1000] + [0] * 9, [0.0] * 9 + [1.0])
    assert 0.9 < far <= 1.0
    with pytest.raises(ValueError):
        quality.js_distance([1, 2], ref)


def test_js_distance_grows_with_the_shift() -> None:
    rng = random.Random(0)
    ref = quality.fractions([1] * 10)
    same = quality.class_counts((rng.randrange(10) for _ in range(2000)), 10)
    skewed = quality.class_counts((rng.choice([0, 0, 0, 1, 2]) for _ in range(2000)), 10)
    assert quality.js_distance(same, ref) < 0.1 < quality.js_distance(skewed, ref)


def test_wilson_interval_matches_the_formula() -> None:
    low, high = quality.wilson_interval(81, 100)
    assert math.isclose(low, 0.7222, abs_tol=1e-3) and math.isclose(high, 0.8749, abs_tol=1e-3)
    assert quality.wilson_interval(0, 0) == (0.0, 1.0)
    assert quality.wilson_interval(10, 10)[1] == 1.0


def test_ece_and_reliability() -> None:
    confidences = [0.95, 0.95, 0.55, 0.55]
    correct = [True, False, True, True]
    bins = quality.reliability(confidences, correct)
    assert bins[9].count == 2 and bins[9].accuracy == 0.5 and bins[5].accuracy == 1.0
    # half the mass 0.45 over-confident, half 0.45 under-confident
    assert math.isclose(quality.expected_calibration_error(confidences, correct), 0.45)
    assert quality.expected_calibration_error([], []) == 0.0
    with pytest.raises(ValueError):
        quality.reliability([0.5], [])


def test_confusion_matrix_and_reference() -> None:
    matrix = quality.confusion_matrix([(0, 0), (0, 1), (1, 1), (5, 0)], 2)
    assert matrix == [[1, 1], [0, 1]]
    ref = quality.reference([0, 0, 1, 2], [0.95, 0.5, 0.5, 0.12], 3)
    assert ref["class_frequencies"] == [0.5, 0.25, 0.25]
    assert ref["n"] == 4 and sum(ref["top1_probability_histogram"]) == 1.0
