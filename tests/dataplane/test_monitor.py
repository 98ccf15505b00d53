"""The monitor's parts without a server: the SQL bins agree with ``quality.bin_of``, the noise
floor shrinks with the window and is what sampling gives, references of the wrong shape are
ignored, and the Prometheus series stay bounded however many versions and classes come."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace

import pytest
import sqlalchemy as sa
from hypothesis import assume, given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest

from service.core import quality
from service.dataplane import prediction_store as store
from service.dataplane.monitor import Window, build_report, noise_floor
from service.dataplane.quality_metrics import MAX_CLASSES, MAX_VERSIONS, QualityCollector
from tests.support.models import card_for, write_model


@pytest.fixture(scope="module")
def engine() -> Iterator[sa.engine.Engine]:
    engine = store.connect("sqlite://")
    yield engine
    engine.dispose()


@given(st.lists(st.floats(0, 1), min_size=1, max_size=20))
def test_the_sql_aggregates_bin_as_quality_does(
    engine: sa.engine.Engine, probabilities: list[float]
) -> None:
    # the SQL compares with k/10 where bin_of multiplies by 10: within 1e-9 of an edge they may part
    probabilities = [p for p in probabilities if abs(p * 10 - round(p * 10)) > 1e-9]
    assume(probabilities)
    model = uuid.uuid4().hex  # every example its own records
    with engine.begin() as connection:  # labelled records, as feedback leaves them
        connection.execute(store.PREDICTIONS.insert(), [
            {"request_id": "r", "item": i, "model": model, "version": 1, "time": 5.0,
             "top1": i % 3, "top1_probability": p, "label": i % 2}
            for i, p in enumerate(probabilities)])  # fmt: skip
    served, labelled = store.window_counts(engine, model, 1, 0.0, 10.0, quality.BINS)
    histogram = [0] * quality.BINS
    for _, bin_, count in served:
        histogram[bin_] += count
    assert histogram == quality.histogram(probabilities)
    assert sum(n for *_, n, _ in labelled) == len(probabilities)
    assert sum(s for *_, s in labelled) == pytest.approx(sum(probabilities))
    assert store.window_counts(engine, model, 1, 6.0, 10.0, quality.BINS) == ([], [])


def test_the_noise_floor_shrinks_with_the_window_and_bounds_sampled_scores() -> None:
    reference = (0.5, 0.3, 0.2)
    floors = [noise_floor((reference,), n) for n in (100, 1000, 10000)]
    assert floors[0] > floors[1] > floors[2] > 0
    assert noise_floor((reference,), 1000) == floors[1]  # seeded: the same every time
    # the larger of two references' scores is at least either one's
    assert noise_floor((reference, (0.25, 0.25, 0.5)), 1000) >= floors[1]


def test_a_reference_of_the_wrong_shape_is_no_reference(tmp_path: pytest.TempPathFactory) -> None:
    folder = write_model(tmp_path, "m", 1)  # type: ignore[arg-type]
    card = card_for("m", 1, folder / "model.onnx")
    broken = replace(card, reference={"class_frequencies": [1.0], "bins": 10,
                                      "top1_probability_histogram": [0.1] * 10})  # fmt: skip
    report = build_report(broken, Window("m", 1, 10.0, 10.0), ([(3, 9, 5)], []), 0.1)
    assert report.predicted_classes.reference is None and report.predicted_classes.drift is None
    assert report.top1_probability.drift is not None  # the histogram is usable
    assert report.drift.score == report.top1_probability.drift
    assert report.predicted_classes.counts[3] == 5 and report.predictions == 5


def test_the_series_are_bounded_in_versions_and_classes() -> None:
    registry = CollectorRegistry()
    collector = QualityCollector(lambda model, version: [f"c{i}" for i in range(1000)], registry)
    registry.register(collector)
    rows = [
        ("id", 0, "m", v, 0.0, top1, 0.5, None)  # prediction_store.COLUMNS
        for v in range(MAX_VERSIONS + 10)
        for top1 in range(0, 1000, 7)
    ]
    collector.observe(rows)
    text = generate_latest(registry).decode()
    counts = [line for line in text.splitlines() if line.startswith("model_top1_probability_count")]
    assert len(counts) == MAX_VERSIONS
    lines = [line for line in text.splitlines() if line.startswith("model_predicted_class_total")]
    classes = {line.split('class="')[1].split('"')[0] for line in lines}
    assert len(classes) <= MAX_CLASSES + 1 and "other" in classes and "c7" in classes
    collector.retain([("m", 0)])
    text = generate_latest(registry).decode()
    assert text.count("model_top1_probability_count{") == 1
