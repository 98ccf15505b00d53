"""Triton's statistics extension, measured where the work happens: one ``InferenceStatistics`` per
model version, fed by its batcher thread (a few integer adds per batch, under one lock) and by the
response cache; ``snapshot`` copies it out as plain frozen values.

Per request, as Triton counts them: ``queue`` (submit to batch start), ``compute_input`` (gathering
the batch's input), ``compute_infer`` (the onnxruntime runs), ``compute_output`` (splitting the
outputs back), each request adding its batch's durations; ``success`` and ``fail`` with their
whole time in the server; per batch size, one count per execution. A failure also counts under
its reason, as Triton's ``nv_inference_request_failure`` metric has them (``FAILURES``).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

# The per-request durations in Triton's order; also the indices into ``InferenceStatistics._ns``.
DURATIONS = (
    "success",
    "fail",
    "queue",
    "compute_input",
    "compute_infer",
    "compute_output",
    "cache_hit",
    "cache_miss",
)
_SUCCESS, _FAIL, _QUEUE, _INPUT, _INFER, _OUTPUT, _HIT, _MISS = range(len(DURATIONS))
# Why a request failed, in Triton's words: REJECTED by the scheduler (its queue full, or its
# timeout out while queued), CANCELED (its client went away while it was queued), BACKEND (the
# run raised), OTHER.
FailureReason = Literal["REJECTED", "CANCELED", "BACKEND", "OTHER"]
FAILURES: tuple[FailureReason, ...] = ("REJECTED", "CANCELED", "BACKEND", "OTHER")


@dataclass(frozen=True)
class Duration:
    count: int = 0
    ns: int = 0


@dataclass(frozen=True)
class BatchSizeStatistics:
    """Executions of one batch size (rows per onnxruntime run) and their durations."""

    batch_size: int
    compute_input: Duration
    compute_infer: Duration
    compute_output: Duration


@dataclass(frozen=True)
class VersionStatistics:
    """One model version's statistics since it was loaded (Triton's ``ModelStatistics``)."""

    name: str
    version: str
    last_inference_ms: int  # milliseconds since the epoch; 0: none yet
    inference_count: int  # images (rows) run, cache hits excluded
    execution_count: int  # onnxruntime runs
    durations: dict[str, Duration]  # keyed by ``DURATIONS``
    batch_stats: list[BatchSizeStatistics]
    failures: dict[str, int] = field(default_factory=dict)  # ``fail``'s count by ``FAILURES``
    pending: int = 0  # requests queued for the model when the snapshot was taken


class InferenceStatistics:
    """The live counters of one model version; written from any thread, read by ``snapshot``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._count = [0] * len(DURATIONS)
        self._ns = [0] * len(DURATIONS)
        self._inferences = 0
        self._executions = 0
        self._last_ms = 0
        self._failures: dict[str, int] = dict.fromkeys(FAILURES, 0)
        self._batches: dict[int, list[int]] = {}  # rows -> [executions, input, infer, output ns]

    def record_execution(self, rows: int, input_ns: int, infer_ns: int, output_ns: int) -> None:
        """One onnxruntime run of ``rows`` rows (a batch, or one chunk of a large request)."""
        with self._lock:
            entry = self._batches.get(rows)
            if entry is None:
                entry = self._batches[rows] = [0, 0, 0, 0]
            entry[0] += 1
            entry[1] += input_ns
            entry[2] += infer_ns
            entry[3] += output_ns
            self._executions += 1
            self._inferences += rows

    def record_batch(
        self, requests: int, queue_ns: int, phases_ns: tuple[int, int, int], total_ns: int
    ) -> None:
        """``requests`` answered by one batch: their summed queue and total times, and the
        batch's input, infer and output times, which every request in it adds once."""
        count, ns = self._count, self._ns
        with self._lock:
            for index, spent in zip((_INPUT, _INFER, _OUTPUT), phases_ns, strict=True):
                count[index] += requests
                ns[index] += spent * requests
            count[_QUEUE] += requests
            ns[_QUEUE] += queue_ns
            count[_SUCCESS] += requests
            ns[_SUCCESS] += total_ns
            self._last_ms = time.time_ns() // 1_000_000

    def record_fail(self, requests: int, ns: int, reason: FailureReason) -> None:
        """Requests that failed, were refused, timed out or were cancelled (``reason``), with
        their summed time."""
        with self._lock:
            self._count[_FAIL] += requests
            self._ns[_FAIL] += ns
            self._failures[reason] += requests

    def record_cache(self, hit: bool, ns: int) -> None:
        """One response cache lookup (a hit is also a success, as Triton counts it)."""
        with self._lock:
            index = _HIT if hit else _MISS
            self._count[index] += 1
            self._ns[index] += ns
            if hit:
                self._count[_SUCCESS] += 1
                self._ns[_SUCCESS] += ns
                self._last_ms = time.time_ns() // 1_000_000

    def snapshot(self, name: str, version: int, pending: int = 0) -> VersionStatistics:
        """The counters now, for ``name`` version ``version``, with ``pending`` requests queued."""
        with self._lock:
            durations = {
                key: Duration(self._count[i], self._ns[i]) for i, key in enumerate(DURATIONS)
            }
            batches = [
                BatchSizeStatistics(
                    rows, Duration(n, input_ns), Duration(n, infer_ns), Duration(n, output_ns)
                )
                for rows, (n, input_ns, infer_ns, output_ns) in sorted(self._batches.items())
            ]
            return VersionStatistics(
                name,
                str(version),
                self._last_ms,
                self._inferences,
                self._executions,
                durations,
                batches,
                dict(self._failures),
                pending,
            )


def statistics_from_dict(row: dict[str, Any]) -> VersionStatistics:
    """The inverse of ``dataclasses.asdict`` (another worker's snapshot, read back from JSON)."""
    durations = {key: Duration(**value) for key, value in row["durations"].items()}
    batches = [
        BatchSizeStatistics(
            b["batch_size"],
            Duration(**b["compute_input"]),
            Duration(**b["compute_infer"]),
            Duration(**b["compute_output"]),
        )
        for b in row["batch_stats"]
    ]
    return VersionStatistics(
        row["name"],
        row["version"],
        row["last_inference_ms"],
        row["inference_count"],
        row["execution_count"],
        durations,
        batches,
        dict(row.get("failures", {})),
        row.get("pending", 0),
    )


def _add(a: Duration, b: Duration) -> Duration:
    return Duration(a.count + b.count, a.ns + b.ns)


def summed_statistics(parts: list[VersionStatistics]) -> VersionStatistics:
    """One version's statistics from several worker processes: counts and times add up, batch
    sizes merge, the last inference is the latest."""
    first = parts[0]
    durations = dict(first.durations)
    failures = dict(first.failures)
    batches = {b.batch_size: b for b in first.batch_stats}
    for part in parts[1:]:
        for reason, count in part.failures.items():
            failures[reason] = failures.get(reason, 0) + count
        for key, value in part.durations.items():
            durations[key] = _add(durations.get(key, Duration()), value)
        for b in part.batch_stats:
            mine = batches.get(b.batch_size)
            batches[b.batch_size] = (
                b
                if mine is None
                else BatchSizeStatistics(
                    b.batch_size,
                    _add(mine.compute_input, b.compute_input),
                    _add(mine.compute_infer, b.compute_infer),
                    _add(mine.compute_output, b.compute_output),
                )
            )
    return VersionStatistics(
        first.name,
        first.version,
        max(p.last_inference_ms for p in parts),
        sum(p.inference_count for p in parts),
        sum(p.execution_count for p in parts),
        durations,
        [batches[size] for size in sorted(batches)],
        failures,
        sum(p.pending for p in parts),
    )
