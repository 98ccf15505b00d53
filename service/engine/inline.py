"""Whether a model version is quick enough to run a lone request on the event loop.

Handing one request to the model's thread and its answer back to the loop costs about 0.35 ms
(docs/benchmarks.md, "Where a request's time goes"); a model whose batch-1 run takes a fraction
of that can spare the hop while nobody else waits. Nothing heavy may run on the loop, so this is
measured per version at warm-up, on its own session: the slowest 1% of ``RUNS`` batch-1 runs
must stay under ``INLINE_RUN_MAX_US``, which then bounds how long one inline run holds the loop.

A series that fails is timed again, up to ``ATTEMPTS`` series: on a shared machine two runs in a
hundred can be preempted for longer than the bound (the lecture model's p99 ranges 100-250 us
here against a median of 90), and one unlucky series would send every lone request of that
process's life through the hop (0.1 ms more each). A slow model fails its first series after two
runs, neither under the bound, and is not timed again.

A version judged slow is then judged again on the batch-1 runs it serves on its thread
(``ServedRuns``), a series at a time, until one stays under the bound: a warm-up spoilt all three
times (a replica starting beside others on a busy host) is corrected by later lone requests.
The verdict only goes that way. Served runs find the caches cold (the lecture model's p99 is
200-260 us served against about 100 us back to back), so judging a quick version on them would
flip it to and fro around the bound, each flip costing a lone request the hop.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

RUNS = 100  # timed batch-1 runs in a series; the slowest 1% is the figure compared with the bound
ATTEMPTS = 3  # series, until one stays under the bound


def quick_run_p99_s(
    run: Callable[[], object], bound_s: float, runs: int = RUNS, attempts: int = ATTEMPTS
) -> float | None:
    """The 99th percentile of ``runs`` calls of ``run``, in seconds, from the first of
    ``attempts`` series that stays under ``bound_s``; None if none does, or at once if a series
    failed without one run under the bound (a slow model, not a preempted quick one: a model
    whose run took 2 s had cost six runs, 8 s more of loading than the two it needs)."""
    for _ in range(attempts):
        p99, any_quick = _series_p99_s(run, bound_s, runs)
        if p99 is not None or not any_quick:
            return p99
    return None


def _series_p99_s(
    run: Callable[[], object], bound_s: float, runs: int
) -> tuple[float | None, bool]:
    """One series' 99th percentile, None once more than 1% of its runs have taken over
    ``bound_s`` (so a slow model costs a series two runs, not ``runs``); and whether any run
    stayed under the bound."""
    allowed = _allowed_over(runs)
    over = 0
    seconds: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        took = time.perf_counter() - start
        seconds.append(took)
        over += took > bound_s
        if over > allowed:
            return None, over < len(seconds)
    return _p99_s(seconds), True


def _allowed_over(runs: int) -> int:
    """Runs of a series that may take over the bound: its slowest 1% (at least one)."""
    return max(1, runs // 100)


def _p99_s(seconds: list[float]) -> float:
    return sorted(seconds)[math.ceil(0.99 * len(seconds)) - 1]


@dataclass(frozen=True)
class Verdict:
    """A series' verdict: its 99th percentile in seconds, or None where it was over the bound."""

    p99_s: float | None


class ServedRuns:
    """The batch-1 runs a version serves (inline or on its thread), judged ``runs`` at a time as
    a warm-up series is. Runs are added from the loop and from the model's thread."""

    def __init__(self, bound_s: float, runs: int = RUNS) -> None:
        self.bound_s = bound_s
        self.runs = runs
        self._seconds: list[float] = []
        self._lock = threading.Lock()

    def add(self, seconds: float) -> Verdict | None:
        """One run's time; the verdict of the series it completes, else None."""
        with self._lock:
            self._seconds.append(seconds)
            if len(self._seconds) < self.runs:
                return None
            series, self._seconds = self._seconds, []
        over = sum(took > self.bound_s for took in series)
        return Verdict(None if over > _allowed_over(len(series)) else _p99_s(series))


def describe(p99_s: float | None, bound_us: int) -> str:
    """A verdict as the log gives it."""
    if p99_s is not None:
        return f"p99 {p99_s * 1e6:.0f} us: a lone request runs inline"
    return f"over {bound_us} us: every request goes to its thread"
