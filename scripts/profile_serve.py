"""Where a request's time goes under load: GC pauses, per-request timelines of the slowest 1%, the
batch sizes the batcher forms, event-loop lag, and (with --py-spy) a sampled profile of the server.

    python scripts/profile_serve.py --clients 64 --seconds 10 [--py-spy /path/to/py-spy] \
        [--env GC_GEN0_THRESHOLD=700]

Starts ``python scripts/profile_serve.py --serve`` (the real ``python -m service`` with probes
attached from outside: ``gc.callbacks``, wrappers around the fast path and the batcher, a 1 ms
ticker on the event loop) on a free loopback port in its own process group, drives it with
``scripts/loadgen.py`` (1-image FP32 JSON, lecture model), then reads what the probes recorded.
A diagnostic, not a benchmark: the probes cost a little time themselves.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import collections
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def serve_with_probes(out: Path) -> None:
    """Run ``python -m service`` in this process with the probes attached; dump them at exit."""
    from service.api import fast_path
    from service.engine import batcher

    gc_pauses: list[tuple[float, float, int]] = []  # (start, seconds, generation)
    gc_start: list[float] = [0.0]

    def on_gc(phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            gc_start[0] = time.perf_counter()
        else:
            gc_pauses.append((gc_start[0], time.perf_counter() - gc_start[0], info["generation"]))

    gc.callbacks.append(on_gc)
    if os.environ.get("PROFILE_SWITCH_INTERVAL_S"):  # an experiment: the GIL's hand-over time
        sys.setswitchinterval(float(os.environ["PROFILE_SWITCH_INTERVAL_S"]))

    timelines: list[tuple[float, float, float, float, float]] = []  # start, queued, run, done, end
    marks: dict[int, list[float]] = {}
    batches: list[tuple[float, int, float]] = []  # (start, rows, seconds)
    lags: list[float] = []

    serve = fast_path.FastInfer._serve

    async def ticker() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            lags.append(time.perf_counter() - t - 0.001)

    tickers: list[asyncio.Task[None]] = []

    async def timed_serve(self: Any, scope: Any, receive: Any, send: Any, *args: Any) -> None:
        if not tickers:
            tickers.append(asyncio.get_running_loop().create_task(ticker()))
        token = marks.setdefault(id(asyncio.current_task()), [time.perf_counter()])
        try:
            await serve(self, scope, receive, send, *args)
        finally:
            m = marks.pop(id(asyncio.current_task()), token)
            end = time.perf_counter()
            if len(m) == 4:
                timelines.append((m[0], m[1], m[2], m[3], end))

    fast_path.FastInfer._serve = timed_serve  # type: ignore[method-assign,assignment]

    submit = batcher.DynamicBatcher.submit

    async def timed_submit(self: Any, rows: Any) -> Any:
        m = marks.get(id(asyncio.current_task()))
        if m is not None:
            m.append(time.perf_counter())  # decoded, queued
        result = await submit(self, rows)
        run_start = result.pop("__run_start__", [0.0])
        if m is not None:
            m.append(run_start[0])
            m.append(time.perf_counter())  # the loop has the answer
        return result

    batcher.DynamicBatcher.submit = timed_submit  # type: ignore[method-assign]

    chunks = batcher.DynamicBatcher._run_in_chunks

    def timed_chunks(self: Any, images: Any, requests: int) -> Any:
        start = time.perf_counter()
        result = chunks(self, images, requests)
        batches.append((start, len(images), time.perf_counter() - start))
        return {**result, "__run_start__": [start] * len(images)}

    batcher.DynamicBatcher._run_in_chunks = timed_chunks  # type: ignore[method-assign]

    def dump() -> None:
        out.write_text(
            json.dumps(
                {
                    "gc": gc_pauses,
                    "timelines": timelines,
                    "batches": batches,
                    "lags": lags,
                    "gc_threshold": gc.get_threshold(),
                    "gc_frozen": gc.get_freeze_count(),
                }
            )
        )

    atexit.register(dump)
    sys.argv = ["service", *sys.argv[sys.argv.index("--") + 1 :]]
    import runpy

    runpy.run_module("service", run_name="__main__")


def summarise(data: dict[str, Any], seconds: float) -> dict[str, Any]:
    first = min((t[0] for t in data["timelines"]), default=0.0)
    data["gc"] = [p for p in data["gc"] if p[0] >= first]  # under load, not while starting
    pauses = sorted(data["gc"], key=lambda p: -p[1])
    by_gen: dict[int, list[float]] = collections.defaultdict(list)
    for _, s, g in data["gc"]:
        by_gen[g].append(s)
    timelines = sorted(data["timelines"], key=lambda t: t[4] - t[0])
    slow = timelines[-max(1, len(timelines) // 100) :]

    def phases(t: list[float]) -> dict[str, float]:
        start, queued, run, done, end = t
        return {
            "decode_ms": (queued - start) * 1e3,
            "wait_for_run_ms": (run - queued) * 1e3 if run else float("nan"),
            "run_and_handback_ms": (done - run) * 1e3 if run else float("nan"),
            "encode_send_ms": (end - done) * 1e3,
            "total_ms": (end - start) * 1e3,
        }

    def mean(rows: list[dict[str, float]]) -> dict[str, float]:
        return {k: round(sum(r[k] for r in rows) / len(rows), 3) for k in rows[0]} if rows else {}

    slow_gc = 0
    for t in slow:
        if any(t[0] <= p[0] <= t[4] and p[1] > 0.002 for p in pauses[:200]):
            slow_gc += 1
    sizes = collections.Counter(min(256, 1 << (r - 1).bit_length()) for _, r, _ in data["batches"])
    lags = sorted(data["lags"])
    return {
        "gc_threshold": data["gc_threshold"],
        "gc_frozen_objects": data["gc_frozen"],
        "gc_collections": {g: len(v) for g, v in sorted(by_gen.items())},
        "gc_seconds_by_generation": {g: round(sum(v), 3) for g, v in sorted(by_gen.items())},
        "gc_max_pause_ms_by_generation": {
            g: round(max(v) * 1e3, 2) for g, v in sorted(by_gen.items())
        },
        "gc_share_of_time": round(sum(p[1] for p in data["gc"]) / seconds, 4),
        "requests": len(timelines),
        "median_phases": phases(timelines[len(timelines) // 2]) if timelines else {},
        "slowest_1pct_mean_phases": mean([phases(t) for t in slow]),
        "slowest_1pct_overlapping_a_gc_pause_over_2ms": f"{slow_gc}/{len(slow)}",
        "batches": len(data["batches"]),
        "batch_rows_histogram_pow2": dict(sorted(sizes.items())),
        "mean_batch_rows": round(
            sum(r for _, r, _ in data["batches"]) / max(1, len(data["batches"])), 1
        ),
        "loop_lag_ms_p50_p99_max": [
            round(lags[int(q * (len(lags) - 1))] * 1e3, 2) for q in (0.5, 0.99, 1.0)
        ]
        if lags
        else [],
    }


def main() -> None:
    if "--serve" in sys.argv:
        serve_with_probes(Path(sys.argv[sys.argv.index("--serve") + 1]))
        return
    from scripts.bench_peers import Group, loadgen, request_body
    from scripts.server_process import free_port, wait_ready

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--py-spy", help="py-spy binary: also sample the server meanwhile")
    parser.add_argument("--py-spy-out", type=Path, default=ROOT / ".cache" / "py-spy.txt")
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the server")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        port = free_port()
        env = {"LOG_LEVEL": "warning", **dict(e.split("=", 1) for e in args.env)}
        argv = [sys.executable, __file__, "--serve", str(tmp / "probes.json"), "--"]
        argv += ["--host", "127.0.0.1", "--port", str(port), "--grpc-port", "-1"]
        group = Group(argv, env, tmp / "server.log")
        try:
            wait_ready(f"http://127.0.0.1:{port}", group.process, 120)
            body = tmp / "body.json"
            body.write_bytes(request_body("FP32"))
            spy = None
            if args.py_spy:
                spy = subprocess.Popen(
                    [args.py_spy, "record", "--pid", str(group.process.pid), "--duration",
                     str(int(args.seconds)), "--rate", "200", "--format", "raw", "--threads",
                     "--nonblocking", "--output", str(args.py_spy_out)],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                )  # fmt: skip
            load = loadgen(port, "/v2/models/cifar10_cnn/infer", body, args.clients, args.seconds)
            if spy is not None:
                spy.wait(timeout=60)
        finally:
            os.killpg(group.process.pid, signal.SIGTERM)
            group.process.wait(timeout=30)
            group.stop()
        data = json.loads((tmp / "probes.json").read_text())
    print(json.dumps({"load": load, **summarise(data, args.seconds + 1)}, indent=1))


if __name__ == "__main__":
    main()
