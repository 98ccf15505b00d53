"""Two or more builds of the service through the real server, pinned as issue 28's figures are
(the server on one core with INTRA_OP_THREADS=1, the load generator on another), in turn round
after round: one client's p50 and 64 clients' requests/s and p99 on the lecture model's 1-image
FP32 JSON.
A build is a checkout (a worktree of another commit: the "before") and environment variables.

    python -m bench pinned-pair --build before=../wt-base --build after=. [--rounds 3]
    python -m bench pinned-pair --build hop=. --build inline=.:INLINE_RUN_MAX_US=250 --ceiling

``--ceiling`` adds the raw ASGI app (``../shared/peers/ceiling_asgi.py``) to each round, and
``--batched-ceiling`` the same app with dynamic batching (``bench/ceiling_batched.py``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.bodies import v2_json
from bench.load import http_load
from bench.peer_limits import start_ceiling
from bench.peer_workloads import PROBABILITIES
from bench.placement import pinned
from bench.server import running_service

PATH = "/v2/models/cifar10_cnn/infer"
BASE_ENV = {"LOG_LEVEL": "warning", "WORKERS": "1", "INTRA_OP_THREADS": "1"}


@dataclass(frozen=True)
class Build:
    """``name=CHECKOUT[:NAME=VALUE,...]``: the service of a checkout, with extra environment."""

    name: str
    checkout: Path
    env: dict[str, str]

    @classmethod
    def parse(cls, text: str) -> Build:
        name, _, rest = text.partition("=")
        where, _, extra = rest.partition(":")
        if not name or not where:
            raise argparse.ArgumentTypeError(f"expected NAME=CHECKOUT[:VAR=VALUE,...]: {text!r}")
        pairs = (item.partition("=") for item in extra.split(",") if item)
        return cls(name, Path(where).resolve(), {key: value for key, _, value in pairs})


@contextmanager
def served_build(build: Build) -> Iterator[tuple[str, int]]:
    """The build served pinned, ready: its address and process group."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**BASE_ENV, **build.env}
        grpc = env.pop("GRPC", "1") != "0"  # GRPC=0: REST alone (no gRPC server on the loop)
        with running_service(
            env, Path(tmp) / "service.log", grpc=grpc, cpus=pinned().server_cpus,
            checkout=build.checkout,
        ) as server:  # fmt: skip
            yield server.address, server.pgid


@contextmanager
def served_ceiling(batched: bool) -> Iterator[tuple[str, int]]:
    """The raw ASGI app (``ceiling_asgi.py``, the model, no framework; ``batched``:
    ``ceiling_batched.py``) pinned as the builds are, started as ``bench peers`` starts it: its
    address and process group."""
    with tempfile.TemporaryDirectory() as tmp:
        group, port = start_ceiling(pinned(), False, Path(tmp) / "asgi.log", batched)
        try:
            yield f"127.0.0.1:{port}", group.process.pid  # the group's leader: its id
        finally:
            group.stop()


def one_round(build: Build, seconds: float, clients: list[int]) -> dict[str, Any]:
    """The build served pinned; each client count's figures from one load each."""
    with served_build(build) as (address, _):
        return {"build": build.name, **loads(address, seconds, clients)}


def ceiling_round(seconds: float, clients: list[int], batched: bool = False) -> dict[str, Any]:
    """The raw ASGI app pinned as the builds are (``served_ceiling``)."""
    with served_ceiling(batched) as (address, _):
        name = "batched" if batched else "ceiling"
        return {"build": name, **loads(address, seconds, clients)}


def loads(address: str, seconds: float, clients: list[int]) -> dict[str, Any]:
    """One load per client count, from the load generator's core: p50, p99, requests/s."""
    body = v2_json(1, "FP32", PROBABILITIES)
    figures: dict[str, Any] = {}
    for count in clients:
        load = http_load(
            address, PATH, body, clients=count, seconds=seconds, cpus=pinned().client_cpus
        )
        if load["errors"]:
            raise SystemExit(f"{address}: {load['errors']} errors {load['error_kinds']}")
        figures[str(count)] = {
            "p50_ms": round(load["p50_ms"], 3),
            "p99_ms": round(load["p99_ms"], 3),
            "requests_per_s": round(load["requests_per_s"]),
        }
    return figures


def summary(rounds: list[dict[str, Any]], clients: list[int]) -> list[str]:
    """Per build and client count: every round's figure and their median."""
    lines = []
    for name in dict.fromkeys(r["build"] for r in rounds):
        mine = [r for r in rounds if r["build"] == name]
        for count in clients:
            for key in ["p50_ms"] if count == 1 else ["requests_per_s", "p99_ms"]:
                values = [r[str(count)][key] for r in mine]
                shown = ", ".join(f"{v:g}" for v in values)
                lines.append(
                    f"{name:12s} {count:3d} client(s) {key:15s} {shown}  (median "
                    f"{statistics.median(values):g})"
                )
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build", type=Build.parse, action="append", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="each load, after 1 s warm-up")
    parser.add_argument("--clients", default="1,64", help="client counts, comma-separated")
    parser.add_argument(
        "--ceiling", action="store_true", help="the raw ASGI app too, each round, as a build"
    )
    parser.add_argument(
        "--batched-ceiling", action="store_true", help="the raw ASGI app with batching too"
    )


def main(args: argparse.Namespace) -> None:
    clients = [int(c) for c in args.clients.split(",")]
    rounds = []
    for round_ in range(1, args.rounds + 1):
        ceilings = [False] * args.ceiling + [True] * args.batched_ceiling
        for build in [*args.build, *ceilings]:
            if isinstance(build, Build):
                figures = one_round(build, args.seconds, clients)
            else:
                figures = ceiling_round(args.seconds, clients, batched=build)
            rounds.append(figures)
            print(json.dumps({"round": round_, **figures}), flush=True)
    print("\n".join(summary(rounds, clients)))
