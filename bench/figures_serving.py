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
        r["requests_per_s"] / by[off]["requests_per_s"]
        for key, r in by.items()
        if key[3] == "1 worker, batching"
        and key[2] > 1
        and (off := (*key[:3], "1 worker, no batching")) in by
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


def _span(pair: list[float], fmt: str = "g") -> str:
    """A recorded ``[low, high]`` as prose writes a range: "0.26-0.34"."""
    low, high = pair
    return f"{format(low, fmt)}-{format(high, fmt)}"


def _slowloris(key: str, fmt: str = "g") -> Figure:
    """One range over the slowloris test's four runs."""
    return ("slowloris", lambda r: _span(r["results"][key], fmt))


def _cost(key: str) -> Figure:
    return ("request-cost", lambda r: format(r["results"][key], "g"))


def _epochs(batch: str, layout: str) -> Figure:
    """The range of one layout's two epochs (docs/scaling.md's reading of its tables)."""

    def draw(r: Record) -> str:
        row = next(x for x in r["results"][batch] if x["layout"].startswith(layout))
        return _span(sorted(row["epoch_s"]), ".1f")

    return ("ddp-epochs", draw)


def _slowest_epoch(record: Record) -> str:
    rows = record["results"]["batch_32"] + record["results"]["batch_256"]
    return f"{max(max(x['epoch_s']) for x in rows):.0f}"


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
    "slowloris.opening-s": _slowloris("opening_s"),
    "slowloris.last-closed-s": _slowloris("last_closed_after_last_opened_s"),
    "slowloris.normal-requests": _slowloris("normal_requests"),
    "slowloris.normal-median-ms": _slowloris("normal_median_ms"),
    "slowloris.normal-max-ms": _slowloris("normal_max_ms"),
    "request-cost.stall-range": (
        "request-cost",
        lambda r: _span(r["results"]["loop_stall_ms_over_runs"]),
    ),
    "request-cost.stall-clean-clone": _cost("loop_stall_ms_clean_clone"),
    "request-cost.stall-reused-parser": _cost("loop_stall_ms_reused_parser"),
    "request-cost.reused-parser-mb": _cost("reused_parser_mb_per_thread"),
    "request-cost.buffers-times-body": _cost("buffers_times_body"),
    "request-cost.nested-before-ms": _cost("nested_arrays_loop_ms_before"),
    "fast-path-cost.timer-us": ("fast-path-cost", lambda r: f"{r['results']['timer_us']:g}"),
    "ddp-epochs.slowest": ("ddp-epochs", _slowest_epoch),
    "ddp-epochs.256.two-processes": _epochs("batch_256", "2 processes"),
    "ddp-epochs.256.one-thread": _epochs("batch_256", "1 process, 1 thread"),
    "ddp-epochs.256.two-threads": _epochs("batch_256", "1 process, 2 threads"),
}
