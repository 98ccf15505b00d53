"""``python -m service`` with probes attached from outside, for ``python -m bench profile``:
``gc.callbacks``, wrappers around the fast path and the batcher, a 1 ms ticker on the event loop;
what they recorded is written as JSON at exit.

    python -m bench.profile_probes OUT.json -- [python -m service's flags]
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import runpy
import sys
import time
from pathlib import Path
from typing import Any

from service.api.rest import fast_path
from service.engine import batcher


class Probes:
    """What the probes record: collector pauses, request timelines, batches, loop lags."""

    def __init__(self) -> None:
        self.gc_pauses: list[tuple[float, float, int]] = []  # (start, seconds, generation)
        self.gc_start = 0.0
        self.timelines: list[tuple[float, ...]] = []  # start, queued, run, done, end
        self.marks: dict[int, list[float]] = {}
        self.batches: list[tuple[float, int, float]] = []  # (start, rows, seconds)
        self.lags: list[float] = []
        self.tickers: list[asyncio.Task[None]] = []

    def on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self.gc_start = time.perf_counter()
        else:
            pause = time.perf_counter() - self.gc_start
            self.gc_pauses.append((self.gc_start, pause, info["generation"]))

    async def ticker(self) -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            self.lags.append(time.perf_counter() - t - 0.001)

    def dump(self, out: Path) -> None:
        out.write_text(
            json.dumps(
                {
                    "gc": self.gc_pauses,
                    "timelines": self.timelines,
                    "batches": self.batches,
                    "lags": self.lags,
                    "gc_threshold": gc.get_threshold(),
                    "gc_frozen": gc.get_freeze_count(),
                }
            )
        )


def wrap_fast_path(probes: Probes) -> None:
    """Each v2 infer request's start and end, and the loop ticker on the first request."""
    serve = fast_path.FastInfer._answer  # past the metrics, body limit and lease

    async def timed_serve(self: Any, scope: Any, receive: Any, send: Any, *args: Any) -> None:
        if not probes.tickers:
            probes.tickers.append(asyncio.get_running_loop().create_task(probes.ticker()))
        key = id(asyncio.current_task())
        token = probes.marks.setdefault(key, [time.perf_counter()])
        try:
            await serve(self, scope, receive, send, *args)
        finally:
            m = probes.marks.pop(key, token)
            end = time.perf_counter()
            if len(m) == 4:
                probes.timelines.append((m[0], m[1], m[2], m[3], end))

    fast_path.FastInfer._answer = timed_serve  # type: ignore[method-assign,assignment]


def wrap_batcher(probes: Probes) -> None:
    """When a request is queued, when its batch ran and when the loop had the answer."""
    submit = batcher.DynamicBatcher.submit
    chunks = batcher.DynamicBatcher._run_in_chunks

    async def timed_submit(
        self: Any, rows: Any, timeout_s: float = 0.0, tag: Any = None, make: Any = None
    ) -> Any:
        m = probes.marks.get(id(asyncio.current_task()))
        if m is not None:
            m.append(time.perf_counter())  # decoded (or queued to be decoded in its batch)
        result = await submit(self, rows, timeout_s, tag, make)
        run_start = result.pop("__run_start__", [0.0])
        if m is not None:
            m.append(run_start[0])
            m.append(time.perf_counter())  # the loop has the answer
        return result

    def timed_chunks(self: Any, images: Any, requests: int) -> Any:
        start = time.perf_counter()
        result, runs = chunks(self, images, requests)
        probes.batches.append((start, len(images), time.perf_counter() - start))
        return {**result, "__run_start__": [start] * len(images)}, runs

    batcher.DynamicBatcher.submit = timed_submit  # type: ignore[method-assign]
    batcher.DynamicBatcher._run_in_chunks = timed_chunks  # type: ignore[method-assign]


def serve_with_probes(out: Path, service_args: list[str]) -> None:
    """Run ``python -m service`` in this process with the probes attached; dump them at exit."""
    probes = Probes()
    gc.callbacks.append(probes.on_gc)
    if os.environ.get("PROFILE_SWITCH_INTERVAL_S"):  # an experiment: the GIL's hand-over time
        sys.setswitchinterval(float(os.environ["PROFILE_SWITCH_INTERVAL_S"]))
    wrap_fast_path(probes)
    wrap_batcher(probes)
    atexit.register(probes.dump, out)
    sys.argv = ["service", *service_args]
    runpy.run_module("service", run_name="__main__")


if __name__ == "__main__":
    serve_with_probes(Path(sys.argv[1]), sys.argv[sys.argv.index("--") + 1 :])
