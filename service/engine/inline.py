"""Whether a model version is quick enough to run a lone request on the event loop.

Handing one request to the model's thread and its answer back to the loop costs about 0.35 ms
(docs/benchmarks.md, "Where a request's time goes"); a model whose batch-1 run takes a fraction
of that can spare the hop while nobody else waits. Nothing heavy may run on the loop, so this is
measured per version at warm-up, on its own session: the slowest 1% of ``RUNS`` batch-1 runs
must stay under ``INLINE_RUN_MAX_US``, which then bounds how long one inline run holds the loop.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

RUNS = 100  # timed batch-1 runs; the slowest 1% is the figure compared with the bound


def quick_run_p99_s(run: Callable[[], object], bound_s: float, runs: int = RUNS) -> float | None:
    """The 99th percentile of ``runs`` calls of ``run``, in seconds; None once more than 1% of
    them have taken over ``bound_s`` (so a slow model costs its load two runs, not ``runs``)."""
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
