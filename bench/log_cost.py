"""What the prediction log costs, in microseconds: the request path's ``record`` per answer and
the writer thread's time per row (making the rows, inserting them), on SQLite or a given URL.

    python -m bench log-cost [--answers 20000] [--images 1] [--url URL]
    python -m bench log-cost --serve 6 [--seconds 4] [--clients 64] [--pinned] [--env NAME=value]

The answers are shaped like the serving benchmark's: ``--images`` images each, the lecture
model's two outputs (10-class ``probabilities`` and ``logits``), a fresh id each. One process;
the writer's parts are timed on this thread (``_drain`` is what the writer thread runs, the
quality metrics' count of each written batch included).

``--serve N``: throughput instead, two real servers over models/ side by side (PREDICTION_LOG
true and false, SQLite in a temporary folder), the serving benchmark's 64-client v2 UINT8 binary
load on each in turn, N rounds alternating which goes first; the geometric mean of the per-round
ratios (log on / log off) and their spread. ``--pinned``: both servers on one core and the load
generator on another (issue 28's fair layout; the writer then shares the server's core). ``--env``:
a setting for the log-on server only (to try a variant against the log off). The server not being
measured is stopped meanwhile (``--idle-running``: not, as before). Prints JSON; the
figures quoted in docs/monitoring.md "What it costs" come from it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from prometheus_client import CollectorRegistry

from bench.placement import SHARED, pinned
from bench.serve import MODEL, binary_scenario, load
from bench.server import Service, running_service
from service.dataplane import prediction_store as store
from service.dataplane.prediction_log import PredictionLog
from service.dataplane.quality_metrics import QualityCollector


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--answers", type=int, default=20_000, help="answers per timed round")
    parser.add_argument("--images", type=int, default=1, help="images per answer")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (the median is shown)")
    parser.add_argument("--url", help="a database URL (default: SQLite in a temporary folder)")
    parser.add_argument("--serve", type=int, default=0, metavar="N", help="N throughput rounds")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per load")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--pinned", action="store_true", help="server and load on their own core")
    parser.add_argument(
        "--idle-running",
        action="store_true",
        help="leave the idle server running during the other's rounds (as before 2026-12-05)",
    )
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=value", help="for the log-on server"
    )


def _outputs(images: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    logits = rng.normal(size=(images, 10)).astype(np.float32)
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return {"probabilities": exp / exp.sum(axis=1, keepdims=True), "logits": logits}


def one_round(log: PredictionLog, args: argparse.Namespace, prefix: str) -> dict[str, float]:
    """Record ``args.answers`` answers, then drain them on this thread; microseconds."""
    rng = np.random.default_rng(0)
    pixels = np.zeros((args.images, 32, 32, 3), dtype=np.uint8)
    answers = [_outputs(args.images, rng) for _ in range(args.answers)]
    start = time.perf_counter()
    for i, outputs in enumerate(answers):
        log.record(f"{prefix}-{i}", "cifar10_cnn", 1, pixels, outputs)
    recorded, cpu = time.perf_counter(), time.thread_time()
    log._drain()
    drained, cpu = time.perf_counter(), time.thread_time() - cpu
    rows = args.answers * args.images
    return {
        "record_us_per_answer": (recorded - start) / args.answers * 1e6,
        "writer_us_per_row": (drained - recorded) / rows * 1e6,  # wall: the database's work too
        "writer_cpu_us_per_row": cpu / rows * 1e6,  # this thread's CPU: what competes for the GIL
    }


# the serving benchmark's default layout ("1 worker, batching")
LAYOUT = {"WORKERS": "1", "DYNAMIC_BATCHING": "true", "LOG_LEVEL": "warning"}


def serve_rounds(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s with the log off and on, interleaved; the ratios on/off per round."""
    scenario = binary_scenario(1, args.clients)
    place = pinned() if args.pinned else SHARED
    extra = dict(item.split("=", 1) for item in args.env)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    cpu_us: dict[str, list[float]] = {"off": [], "on": []}
    shares: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as stack:
        servers = {
            state: stack.enter_context(
                running_service(
                    {
                        **LAYOUT,
                        **(extra if state == "on" else {}),
                        "PREDICTION_LOG": flag,
                        "DATA_DIR": f"{folder}/{state}",
                    },
                    Path(folder) / f"{state}.log",
                    grpc=False,
                    wait_s=120,
                    cpus=place.server_cpus,
                )
            )
            for state, flag in (("off", "false"), ("on", "true"))
        }
        processes = {state: _process(server.port) for state, server in servers.items()}
        for n in range(args.serve):
            for state in ("off", "on") if n % 2 == 0 else ("on", "off"):
                server, process = servers[state], processes[state]
                idle = servers["on" if state == "off" else "off"]
                images, cpu, writer = _served(server), _cpu_s(process), _writer_cpu_s(server)
                with contextlib.nullcontext() if args.idle_running else _paused(idle):
                    result = load(server, scenario, args.seconds, place.client_cpus)
                served_images = _served(server) - images
                cpu = _cpu_s(process) - cpu
                result["server_cpu_us_per_image"] = cpu / served_images * 1e6
                result["writer_cpu_share"] = (_writer_cpu_s(server) - writer) / cpu
                rates[state].append(result["images_per_s"])
                cpu_us[state].append(result["server_cpu_us_per_image"])
                shares[state].append(result["writer_cpu_share"])
                print(json.dumps({"round": n, "log": state, **result}), flush=True)
    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "placement": place.mode,
        "idle_server": "running" if args.idle_running else "stopped",
        "log_on_env": extra,
        "images_per_s": {state: [round(r) for r in found] for state, found in rates.items()},
        "throughput": _ratios(rates["on"], rates["off"]),
        "server_cpu_us_per_image": {s: [round(c, 1) for c in found] for s, found in cpu_us.items()},
        "cpu_per_image": _ratios(cpu_us["on"], cpu_us["off"]),
        "writer_cpu_share": [round(share, 4) for share in shares["on"]],
    }


@contextlib.contextmanager
def _paused(server: Service) -> Iterator[None]:
    """The idle server stopped (SIGSTOP to its process group) while the other is measured: the
    log-on server's background work (the writer's look, the monitor's refresh, pruning) would
    otherwise run during the log-off rounds and count against them."""
    os.killpg(server.pgid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.killpg(server.pgid, signal.SIGCONT)


def _ratios(on: list[float], off: list[float]) -> dict[str, Any]:
    """Per-round ratios on/off, their geometric mean and its 95 % interval (t, log scale)."""
    logs = [math.log(a / b) for a, b in zip(on, off, strict=True)]
    mean = statistics.fmean(logs)
    half = 2.26 * statistics.stdev(logs) / math.sqrt(len(logs)) if len(logs) > 1 else math.inf
    return {
        "ratios": [round(math.exp(x), 3) for x in logs],
        "geometric_mean": round(math.exp(mean), 3),
        "interval_95": [round(math.exp(mean - half), 3), round(math.exp(mean + half), 3)],
    }


def _process(port: int) -> psutil.Process:
    """The server process listening on ``port`` (WORKERS=1: the one that does the work)."""
    for connection in psutil.net_connections("tcp"):
        if connection.laddr and connection.laddr.port == port and connection.status == "LISTEN":
            return psutil.Process(connection.pid)
    raise SystemExit(f"nothing listens on {port}")


def _cpu_s(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _writer_cpu_s(server: Service) -> float:
    """The prediction log writer's CPU seconds so far (0 with the log off)."""
    with urllib.request.urlopen(f"http://{server.address}/metrics", timeout=10) as answer:
        for line in answer.read().decode().splitlines():
            if line.startswith("prediction_log_writer_cpu_seconds_total "):
                return float(line.split()[1])
    return 0.0


def _served(server: Service) -> int:
    """Images the lecture model has answered so far (its Triton statistics)."""
    url = f"http://{server.address}/v2/models/{MODEL}/stats"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return int(json.load(answer)["model_stats"][0]["inference_count"])


def main(args: argparse.Namespace) -> None:
    if args.serve:
        print(json.dumps(serve_rounds(args), indent=2))
        return
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or store.database_url(None, Path(folder))
        log = PredictionLog(url, CollectorRegistry(), 10**9, 0.0, (1e9, 10**9))
        # the quality metrics count every written batch on the writer thread, as in the server
        quality = QualityCollector(lambda *_: [f"c{i}" for i in range(10)], CollectorRegistry())
        log.on_written = quality.observe
        _ = log.engine  # connect and make the tables before timing
        log.close(10.0)  # the writer thread stops: this thread drains, timed
        rounds = [one_round(log, args, f"r{n}-{time.time_ns()}") for n in range(args.rounds)]
        log.engine.dispose()
    result: dict[str, Any] = {
        "answers": args.answers,
        "images": args.images,
        "store": url.split(":")[0],
        **{key: round(statistics.median(r[key] for r in rounds), 2) for key in rounds[0]},
        "spread": {key: [round(r[key], 2) for r in rounds] for key in rounds[0]},
    }
    print(json.dumps(result, indent=2))
