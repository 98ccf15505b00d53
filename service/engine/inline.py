"""Whether a model version is quick enough to run a lone request on the event loop.

Handing one request to the model's thread and its answer back to the loop costs about 0.35 ms
(docs/benchmarks.md, "Where a request's time goes"); a model whose batch-1 run takes a fraction
of that can spare the hop while nobody else waits. Nothing heavy may run on the loop, so this is
measured per version at warm-up, on its own session: the slowest 1% of ``RUNS`` batch-1 runs
must stay under ``INLINE_RUN_MAX_US``, which then bounds how long one inline run holds the loop.

A series that fails is timed again, up to ``ATTEMPTS`` series: on a shared machine two runs in a
hundred can be preempted for longer than the bound (the lecture model's p99 ranges 100-250 us
here against a median of 90), and one unlucky series would send every lone request of that
process's life through the hop (0.1 ms more each). A slow model fails each series after two runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

RUNS = 100  # timed batch-1 runs in a series; the slowest 1% is the figure compared with the bound
ATTEMPTS = 3  # series, until one stays under the bound


def quick_run_p99_s(
    run: Callable[[], object], bound_s: float, runs: int = RUNS, attempts: int = ATTEMPTS
) -> float | None:
    """The 99th percentile of ``runs`` calls of ``run``, in seconds, from the first of
    ``attempts`` series that stays under ``bound_s``; None if none does."""
    for _ in range(attempts):
        p99 = _series_p99_s(run, bound_s, runs)
        if p99 is not None:
            return p99
    return None


def _series_p99_s(run: Callable[[], object], bound_s: float, runs: int) -> float | None:
    """One series' 99th percentile; None once more than 1% of its runs have taken over
    ``bound_s`` (so a slow model costs a series two runs, not ``runs``)."""
    allowed = max(1, runs // 100)
    over = 0
    seconds: list[float] = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        took = time.perf_counter() - start
        seconds.append(took)
        over += took > bound_s
        if over > allowed:
            return None
    seconds.sort()
    return seconds[math.ceil(0.99 * len(seconds)) - 1]
