"""The top-1 probability histogram takes a written batch in one increment a bucket
(``quality_metrics._observe_all``), the same exposition as one ``observe`` a value, in one process
and with prometheus-client's multiprocess files (WORKERS > 1)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest, multiprocess, values

from service.dataplane.quality_metrics import BUCKETS, _observe_all

VALUES = [0.0, 0.1, 0.1000001, 0.35, 0.5, 0.99, 1.0, 1.5, -0.2, 0.7, 0.7, 0.2]


def histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("top1", "t", ["model"], buckets=BUCKETS, registry=registry)


def exposition(bulk: bool) -> bytes:
    registry = CollectorRegistry()
    child = histogram(registry).labels("m")
    if bulk:
        _observe_all(child, VALUES)
    else:
        for value in VALUES:
            child.observe(value)
    lines = generate_latest(registry).splitlines()
    return b"\n".join(line for line in lines if b"_created" not in line)


def test_one_increment_a_bucket_reads_as_one_observe_a_value() -> None:
    assert exposition(bulk=True) == exposition(bulk=False)
    assert b'top1_bucket{le="0.1",model="m"} 3.0' in exposition(bulk=True)


def test_the_same_in_the_workers_shared_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    monkeypatch.setattr(values, "ValueClass", values.MultiProcessValue())  # as at import
    _observe_all(histogram(CollectorRegistry()).labels("m"), VALUES)
    read = CollectorRegistry()
    multiprocess.MultiProcessCollector(read, str(tmp_path))  # type: ignore[no-untyped-call]
    (family,) = [f for f in read.collect() if f.name == "top1"]
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("top1_count", None)] == len(VALUES)
    assert math.isclose(samples[("top1_sum", None)], sum(VALUES))
    assert samples[("top1_bucket", "0.1")] == 3 and samples[("top1_bucket", "+Inf")] == len(VALUES)
