"""Figures quoted in the serving, reliability and scaling pages' prose, each drawn from one results
record (``bench.figures`` holds the rest and merges these). Standard library only."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Record = dict[str, Any]
Figure = tuple[str, Callable[[Record], str]]


def _change(name: str, key: str, fmt: str = ",.0f") -> Figure:
    """One figure of the serving changes' comparisons (``serving-changes``)."""
    return ("serving-changes", lambda r: format(r["results"][name][key], fmt))


def _spinning_gain(record: Record) -> str:
    low, high = record["results"]["spinning_off"]["gain_64_clients_pct"]
    return f"{low}-{high}%"


def _batching_gain(record: Record) -> str:
    """The largest ratio of batching on to off, one worker, same scenario and clients (> 1), in
    tenths rounded down, as "up to N x" reads."""
    rows = record["results"]["rows"]
    by = {(r["label"], r["images_per_request"], r["concurrency"], r["layout"]): r for r in rows}
    ratios = [
        r["requests_per_s"] / by[(*key[:3], "1 worker, no batching")]["requests_per_s"]
        for key, r in by.items()
        if key[3] == "1 worker, batching" and key[2] > 1
    ]
    return f"{math.floor(max(ratios) * 10) / 10:.1f}"


def _collector_p99(row: int) -> Figure:
    return ("profile-collector", lambda r: f"{r['results']['rows'][row]['p99_ms']:.1f}")


def _median_changes(record: Record) -> str:
    """The medians' differences, after against before, in whole percent."""
    changes = [
        f"{(row['after_median'] / row['before_median'] - 1) * 100:.0f} %"
        for row in record["results"]["rows"]
    ]
    return " and ".join(changes)


def _request_cost_when(record: Record) -> str:
    date, clock = record["time"].split("T")
    return f"{clock} UTC on {date}, commit {record['commit']}"


def _thousands(value: float) -> str:
    return f"{round(value, -3):,.0f}"


def _lecture_throughput(record: Record) -> str:
    row = next(r for r in record["results"]["rows"] if r["architecture"] == "lecture")
    return _thousands(row["throughput"])


FIGURES: dict[str, Figure] = {
    "serving-changes.before.requests-per-s": _change("before_this_work", "requests_per_s"),
    "serving-changes.before.p50": _change("before_this_work", "p50_ms"),
    "serving-changes.before.p99": _change("before_this_work", "p99_ms"),
    "serving-changes.fast-path.before": _change("fast_path", "before_requests_per_s"),
    "serving-changes.fast-path.after": _change("fast_path", "after_requests_per_s"),
    "serving-changes.spinning.gain": ("serving-changes", _spinning_gain),
    "serving-changes.spinning.p50": _change("spinning_off", "lone_client_p50_under_ms", "g"),
    "serving.batching-gain": ("serving", _batching_gain),
    "profile-collector.defaults.p99": _collector_p99(0),
    "profile-collector.new-default.p99": _collector_p99(1),
    "fast-path-cost.median-changes": ("fast-path-cost", _median_changes),
    "request-cost.when": ("request-cost", _request_cost_when),
    "training.onnx-batch-1.thousands": (
        "training",
        lambda r: _thousands(r["results"]["onnx_images_per_s"]["1"]),
    ),
    "models.lecture.thousands": ("models", _lecture_throughput),
}
