"""What the thread hop costs a lone request (issue 28): one model version loaded twice in process,
once allowed to run a lone request inline (``INLINE_RUN_MAX_US``) and once not, timed by awaiting
``ModelRuntime.infer`` on one image one call after another; no HTTP, so the hop stands alone.

    python -m bench inline-hop [--model cifar10_cnn] [--calls 3000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np

from bench.results import ROOT
from service.engine.runtime import ModelRuntime, RuntimeOptions
from service.engine.version_folder import load_version


def loaded(model: str, inline_run_max_us: int) -> ModelRuntime:
    """Version 1 of ``model``, warmed up (and timed for running inline) as the server does."""
    options = RuntimeOptions(
        providers=("CPUExecutionProvider",), intra_op_threads=2, inline_run_max_us=inline_run_max_us
    )
    return load_version(model, 1, ROOT / "models" / model / "1", options)[1]


async def p50_p99_us(runtime: ModelRuntime, calls: int) -> tuple[float, float]:
    image = np.zeros((1, *runtime.image_shape), np.uint8)
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        await runtime.infer(image)
        seconds.append(time.perf_counter() - start)
    seconds.sort()
    return seconds[calls // 2] * 1e6, seconds[int(calls * 0.99)] * 1e6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="cifar10_cnn")
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)


def main(args: argparse.Namespace) -> None:
    runtimes = {"inline": loaded(args.model, 250), "model's thread": loaded(args.model, 0)}
    if runtimes["inline"].inline_p99_s is None:
        raise SystemExit(f"{args.model}'s batch-1 run was timed over 250 us: never inline here")
    for round_ in range(1, args.rounds + 1):
        for name, runtime in runtimes.items():
            p50, p99 = asyncio.run(p50_p99_us(runtime, args.calls))
            print(f"round {round_} {name:14s} p50 {p50:.0f} us p99 {p99:.0f} us", flush=True)
    for runtime in runtimes.values():
        runtime.close()
