"""What the prediction log costs, in microseconds: the request path's ``record`` per answer and
the writer thread's time per row (making the rows, inserting them), on SQLite or a given URL.

    python -m bench log-cost [--answers 20000] [--images 1] [--url URL]

The answers are shaped like the serving benchmark's: ``--images`` images each, the lecture
model's two outputs (10-class ``probabilities`` and ``logits``), a fresh id each. One process;
the writer's parts are timed on this thread (``_drain`` is what the writer thread runs). Prints
JSON; the figures quoted in docs/monitoring.md "What it costs" come from it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from service.dataplane import prediction_store as store
from service.dataplane.prediction_log import PredictionLog


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--answers", type=int, default=20_000, help="answers per timed round")
    parser.add_argument("--images", type=int, default=1, help="images per answer")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (the median is shown)")
    parser.add_argument("--url", help="a database URL (default: SQLite in a temporary folder)")


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


def main(args: argparse.Namespace) -> None:
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
