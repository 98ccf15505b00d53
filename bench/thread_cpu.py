"""The server's CPU per request, thread by thread, under a pinned load: what throughput hides.

At 64 clients on one core the server is CPU-bound, so requests/s swings with the machine's
other tenants while the CPU each request costs stays put. Each build (as ``pinned-pair`` takes
them: a checkout and environment variables) is served pinned as issue 28's figures are (the
server on one core with ``INTRA_OP_THREADS=1``, ``bench.loadgen`` on another, the lecture
model's 1-image FP32 JSON); after ``--settle`` seconds of the load, every thread's CPU time is
read from ``/proc/<pid>/task/*/stat`` over ``--seconds`` and divided by the requests answered
meanwhile. Builds take turns, round after round; ``--batched-ceiling`` adds the raw app that
batches (``bench/ceiling_batched.py``).

    python -m bench thread-cpu --build before=../wt-base --build after=. [--rounds 3]

Docs: docs/benchmarks.md, "The decode's fast lane".
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench.bodies import v2_json
from bench.load import http_load
from bench.peer_workloads import PROBABILITIES
from bench.pinned_pair import PATH, Build, served_build, served_ceiling
from bench.placement import group_dirs

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def thread_ticks(pids: list[int]) -> dict[tuple[int, int], tuple[str, int]]:
    """Every thread of ``pids``: (pid, tid) -> (its name, user + system CPU in clock ticks)."""
    ticks = {}
    for pid in pids:
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat, name = (task / "stat").read_text(), (task / "comm").read_text().strip()
            except OSError:  # ended meanwhile
                continue
            fields = stat.rsplit(")", 1)[1].split()
            ticks[pid, int(task.name)] = (name, int(fields[11]) + int(fields[12]))
    return ticks


def per_request(
    pgid: int, address: str, clients: int, settle_s: float, seconds: float
) -> dict[str, Any]:
    """The load from the load generator's core; each busy thread's CPU per request (us) over
    ``seconds`` of it, the busiest first, and the load's requests/s."""
    load: dict[str, Any] = {}
    body = v2_json(1, "FP32", PROBABILITIES)
    total_s = settle_s + seconds + 1.0

    def run() -> None:
        figures = http_load(address, PATH, body, clients=clients, seconds=total_s, cpus="1")
        load.update(figures)

    loader = threading.Thread(target=run)
    loader.start()
    time.sleep(1.0 + settle_s)  # the load generator's warm-up, then the settling
    pids = [int(folder.name) for folder in group_dirs(pgid)]
    before, start = thread_ticks(pids), time.perf_counter()
    time.sleep(seconds)
    after, elapsed = thread_ticks(pids), time.perf_counter() - start
    loader.join()
    if load.get("errors"):
        raise SystemExit(f"{address}: {load['errors']} errors {load['error_kinds']}")
    answered = load["requests_per_s"] * elapsed
    used = {
        key: (name, ticks - before[key][1])
        for key, (name, ticks) in after.items()
        if key in before and ticks > before[key][1]
    }
    threads = [
        {"thread": name, "us_per_request": round(spent / CLOCK_TICKS / answered * 1e6, 1)}
        for name, spent in sorted(used.values(), key=lambda item: -item[1])
    ]
    return {"requests_per_s": round(load["requests_per_s"]), "threads": threads}


def build_round(build: Build | None, args: argparse.Namespace) -> dict[str, Any]:
    """One build's figures (None: the raw app that batches)."""
    serving = served_ceiling(batched=True) if build is None else served_build(build)
    with serving as (address, pgid):
        figures = per_request(pgid, address, args.clients, args.settle, args.seconds)
    return {"build": "batched" if build is None else build.name, **figures}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build", type=Build.parse, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--settle", type=float, default=1.0, help="seconds of load before")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds measured")
    parser.add_argument(
        "--batched-ceiling", action="store_true", help="the raw app that batches too"
    )


def main(args: argparse.Namespace) -> None:
    results: list[dict[str, Any]] = []
    for round_ in range(1, args.rounds + 1):
        for build in [*args.build, *([None] if args.batched_ceiling else [])]:
            figures = build_round(build, args)
            results.append(figures)
            busiest = ", ".join(
                f"{t['thread']} {t['us_per_request']:g} us" for t in figures["threads"][:3]
            )
            print(
                f"round {round_} {figures['build']:10s} {figures['requests_per_s']:6d} req/s"
                f"  {busiest}",
                flush=True,
            )
    print("\nbusiest thread's CPU per request (us), each round, and the median:")
    for name in dict.fromkeys(r["build"] for r in results):
        values = [r["threads"][0]["us_per_request"] for r in results if r["build"] == name]
        shown = ", ".join(f"{v:g}" for v in values)
        print(f"{name:10s} {shown}  (median {statistics.median(values):g})")
