"""What the prediction log costs, in microseconds: the request path's ``record`` per answer and
the writer thread's time per row (making the rows, inserting them), on SQLite or a given URL.

    python -m bench log-cost [--answers 20000] [--images 1] [--url URL]
    python -m bench log-cost --serve 6 [--seconds 4] [--clients 64]

The answers are shaped like the serving benchmark's: ``--images`` images each, the lecture
model's two outputs (10-class ``probabilities`` and ``logits``), a fresh id each. One process;
the writer's parts are timed on this thread (``_drain`` is what the writer thread runs).

``--serve N``: throughput instead, two real servers over models/ side by side (PREDICTION_LOG
true and false, SQLite in a temporary folder), the serving benchmark's 64-client v2 UINT8 binary
load on each in turn, N rounds alternating which goes first; the geometric mean of the per-round
ratios (log on / log off) and their spread. Prints JSON; the figures quoted in
docs/monitoring.md "What it costs" come from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from bench.serve import binary_scenario, load
from bench.server import running_service
from service.dataplane import prediction_store as store
from service.dataplane.prediction_log import PredictionLog


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--answers", type=int, default=20_000, help="answers per timed round")
    parser.add_argument("--images", type=int, default=1, help="images per answer")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (the median is shown)")
    parser.add_argument("--url", help="a database URL (default: SQLite in a temporary folder)")
    parser.add_argument("--serve", type=int, default=0, metavar="N", help="N throughput rounds")
    parser.add_argument("--seconds", type=float, default=4.0, help="measured seconds per load")
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")


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
    recorded = time.perf_counter()
    log._drain()
    drained = time.perf_counter()
    rows = args.answers * args.images
    return {
        "record_us_per_answer": (recorded - start) / args.answers * 1e6,
        "writer_us_per_row": (drained - recorded) / rows * 1e6,
    }


# the serving benchmark's default layout ("1 worker, batching")
LAYOUT = {"WORKERS": "1", "DYNAMIC_BATCHING": "true", "LOG_LEVEL": "warning"}


def serve_rounds(args: argparse.Namespace) -> dict[str, Any]:
    """Images/s with the log off and on, interleaved; the ratios on/off per round."""
    scenario = binary_scenario(1, args.clients)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder, ExitStack() as stack:
        servers = {
            state: stack.enter_context(
                running_service(
                    {
                        "PREDICTION_LOG": flag,
                        "DATA_DIR": f"{folder}/{state}",
                        "LOG_LEVEL": "warning",
                    },
                    Path(folder) / f"{state}.log",
                    grpc=False,
                    wait_s=120,
                )
            )
            for state, flag in (("off", "false"), ("on", "true"))
        }
        for n in range(args.serve):
            for state in ("off", "on") if n % 2 == 0 else ("on", "off"):
                result = load(servers[state], scenario, args.seconds)
                rates[state].append(result["images_per_s"])
                print(json.dumps({"round": n, "log": state, **result}), flush=True)
    ratios = [on / off for on, off in zip(rates["on"], rates["off"], strict=True)]
    return {
        "clients": args.clients,
        "seconds": args.seconds,
        "images_per_s": {state: [round(r) for r in found] for state, found in rates.items()},
        "ratios": [round(r, 3) for r in ratios],
        "geometric_mean_ratio": round(statistics.geometric_mean(ratios), 3),
    }


def main(args: argparse.Namespace) -> None:
    if args.serve:
        print(json.dumps(serve_rounds(args), indent=2))
        return
    with tempfile.TemporaryDirectory() as folder:
        url = args.url or store.database_url(None, Path(folder))
        log = PredictionLog(url, CollectorRegistry(), 10**9, 0.0, (1e9, 10**9))
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
