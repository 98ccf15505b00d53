"""Where a request's time goes under load: GC pauses, per-request timelines of the slowest 1%, the
batch sizes the batcher forms, event-loop lag, and (with --py-spy) a sampled profile of the server.

    python -m bench profile --clients 64 --seconds 10 [--py-spy /path/to/py-spy] \
        [--env GC_GEN0_THRESHOLD=700] [--pinned] [--no-write]

Starts ``python -m bench.profile_probes`` (the real ``python -m service`` with probes attached
from outside: ``gc.callbacks``, wrappers around the fast path and the batcher, a 1 ms ticker on
the event loop) on a free loopback port in its own process group, drives it with
``bench.loadgen`` (1-image FP32 JSON, lecture model), then reads what the probes recorded and
writes it to ``docs/results/profile.json``. ``--pinned`` places them as ``bench peers`` does (the
server on one core with INTRA_OP_THREADS=1, the load generator on another). A diagnostic, not a
benchmark: the probes cost a little time themselves.
"""

from __future__ import annotations

import argparse
import collections
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.bodies import v2_json
from bench.load import http_load
from bench.placement import SHARED, pinned
from bench.publish import publish
from bench.results import ROOT
from bench.server import free_port, start


def phases(t: list[float]) -> dict[str, float]:
    """A request's timeline (start, queued, run, done, end) as the time each phase took."""
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


def collector(data: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The collector's pauses under load (not while starting), by generation."""
    first = min((t[0] for t in data["timelines"]), default=0.0)
    data["gc"] = [p for p in data["gc"] if p[0] >= first]
    by_gen: dict[int, list[float]] = collections.defaultdict(list)
    for _, s, g in data["gc"]:
        by_gen[g].append(s)
    return {
        "gc_threshold": data["gc_threshold"],
        "gc_frozen_objects": data["gc_frozen"],
        "gc_collections": {g: len(v) for g, v in sorted(by_gen.items())},
        "gc_seconds_by_generation": {g: round(sum(v), 3) for g, v in sorted(by_gen.items())},
        "gc_max_pause_ms_by_generation": {
            g: round(max(v) * 1e3, 2) for g, v in sorted(by_gen.items())
        },
        "gc_share_of_time": round(sum(p[1] for p in data["gc"]) / seconds, 4),
    }


def summarise(data: dict[str, Any], seconds: float) -> dict[str, Any]:
    """What the probes recorded, reduced to the figures the docs quote."""
    gc_summary = collector(data, seconds)
    pauses = sorted(data["gc"], key=lambda p: -p[1])
    timelines = sorted(data["timelines"], key=lambda t: t[4] - t[0])
    slow = timelines[-max(1, len(timelines) // 100) :]
    slow_gc = sum(
        1 for t in slow if any(t[0] <= p[0] <= t[4] and p[1] > 0.002 for p in pauses[:200])
    )
    sizes = collections.Counter(min(256, 1 << (r - 1).bit_length()) for _, r, _ in data["batches"])
    lags = sorted(data["lags"])
    return {
        **gc_summary,
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


def profile(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """The probed server under ``args.clients`` clients (and py-spy, if asked): the load
    generator's summary and what the probes recorded."""
    port = free_port()
    place = pinned() if args.pinned else SHARED
    env = {"LOG_LEVEL": "warning", **({"INTRA_OP_THREADS": "1"} if args.pinned else {})}
    env.update(e.split("=", 1) for e in args.env)
    argv = [sys.executable, "-m", "bench.profile_probes", str(tmp / "probes.json"), "--"]
    argv += ["--host", "127.0.0.1", "--port", str(port), "--grpc-port", "-1"]
    group = start(place.server(argv), env, port, tmp / "server.log", 120)
    try:
        spy = None
        if args.py_spy:
            spy = subprocess.Popen(
                [args.py_spy, "record", "--pid", str(group.process.pid), "--duration",
                 str(int(args.seconds)), "--rate", "200", "--format", "raw", "--threads",
                 "--nonblocking", "--output", str(args.py_spy_out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        body = v2_json(1, "FP32", ["probabilities"])
        load = http_load(f"127.0.0.1:{port}", "/v2/models/cifar10_cnn/infer", body,
                         clients=args.clients, seconds=args.seconds,
                         cpus=place.client_cpus)  # fmt: skip
        if spy is not None:
            spy.wait(timeout=60)
    finally:
        group.stop()  # SIGTERM first: the probes are written at the server's exit
    data = json.loads((tmp / "probes.json").read_text())
    return {"load": load, **summarise(data, args.seconds + 1)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--py-spy", help="py-spy binary: also sample the server meanwhile")
    parser.add_argument("--py-spy-out", type=Path, default=ROOT / ".cache" / "py-spy.txt")
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the server")
    parser.add_argument(
        "--pinned", action="store_true", help="server on one core, load generator on another"
    )
    parser.add_argument("--no-write", action="store_true", help="print only")


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as name:
        results = profile(args, Path(name))
    results["clients"] = args.clients
    results["placement"] = "pinned" if args.pinned else "shared"
    print(json.dumps(results, indent=1))
    publish("profile", results, args.no_write)
