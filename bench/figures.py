"""Single figures quoted in prose, each named and drawn from one results record, written between
``<!-- figure NAME -->`` and ``<!-- /figure -->`` so a page's sentence can't drift from the run.
Standard library only (the docs test imports it)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Record = dict[str, Any]


def _serving_row(record: Record, label: str, images: int, clients: int, layout: str) -> Record:
    for row in record["results"]["rows"]:
        key = (row["label"], row["images_per_request"], row["concurrency"], row["layout"])
        if key == (label, images, clients, layout):
            return dict(row)
    raise KeyError(f"no serving row {label}, {images} images, {clients} clients, {layout}")


def _workload(record: Record, label: str, clients: int) -> Record:
    for w in record["results"]["workloads"]:
        if (w["label"], w["clients"]) == (label, clients):
            return dict(w)
    raise KeyError(f"no peers workload {label} at {clients} clients")


def _replica(record: Record, layout: str, scenario: str) -> Record:
    for row in record["results"]["rows"]:
        if (row["layout"], row["scenario"]) == (layout, scenario):
            return dict(row)
    raise KeyError(f"no replicas row {layout}, {scenario}")


def _kilo(value: float) -> str:
    return f"{value / 1000:.1f}k"


def _binary_256(record: Record) -> Record:
    return _serving_row(record, "v2 UINT8 binary", 256, 4, "1 worker, batching")


LECTURE, BN = "lecture model, FP32 JSON", "cifar10_cnn_bn, UINT8 JSON"
WORKERS_2 = "1 api server, WORKERS=2, direct"

# name -> (the record it is drawn from, how the figure reads in prose)
FIGURES: dict[str, tuple[str, Callable[[Record], str]]] = {
    "serving.when": ("serving", lambda r: f"{r['time'][11:16]} UTC, {r['time'][:10]}"),
    "serving.binary-256.images-per-s": (
        "serving", lambda r: f"{_binary_256(r)['images_per_s']:,.0f}"
    ),
    "serving.binary-256.of-ceiling": ("serving", lambda r: f"{_binary_256(r)['of_ceiling']:.0%}"),
    "serving.ceiling-256": (
        "serving", lambda r: f"{r['results']['ceiling_images_per_s']['256']:,.0f}"
    ),
    "peers.date": ("peers", lambda r: r["time"][:10]),
    "peers.lecture-64.rps-ratio": (
        "peers", lambda r: f"{_workload(r, LECTURE, 64)['rps_ratio']:.2f}x"
    ),
    "peers.lecture-64.p99-ratio": (
        "peers", lambda r: f"{_workload(r, LECTURE, 64)['p99_ratio']:.2f}x"
    ),
    "peers.bn-64.rps-ratio": ("peers", lambda r: f"{_workload(r, BN, 64)['rps_ratio']:.2f}x"),
    "peers.bn-64.p99-ratio": ("peers", lambda r: f"{_workload(r, BN, 64)['p99_ratio']:.2f}x"),
    "replicas.workers-2.binary": (
        "replicas", lambda r: _kilo(_replica(r, WORKERS_2, "v2 UINT8 binary")["requests_per_s"])
    ),
    "replicas.workers-2.json": (
        "replicas", lambda r: _kilo(_replica(r, WORKERS_2, "v2 FP32 JSON")["requests_per_s"])
    ),
}  # fmt: skip
