"""Builds of the service (and the raw ASGI app) served at once on the server's core, one client on
the other core alternating single requests between them (``bench.alternating_client``): each
build's one-client p50 and its paired gap to the first, taken at the same moments of the machine.

    python -m bench alternate --build before=../wt-base --build after=. [--raw] [--requests 8000]
    python -m bench alternate --build ours=. --raw      # the service against the raw ASGI app

A build is ``NAME=CHECKOUT[:VAR=VALUE,...]`` as for ``bench pinned-pair``, which measures builds
one after another (rounds of 5 s loads): there, the machine's swings between minutes (0.1 ms of
p50 here) drown a change of 10-30 us; here two identical builds differ by 0 us. The absolute
p50s are higher than a lone server's: each server's caches are cooled by the others' requests.
``bench peers`` runs the service against the raw app this way in each placement, as the limit
beside the one-client target.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

from bench.bodies import v2_json
from bench.load import run_module
from bench.peer_limits import start_ceiling
from bench.peer_workloads import LECTURE, PROBABILITIES
from bench.pinned_pair import BASE_ENV, Build
from bench.placement import Placement, pinned
from bench.results import ROOT
from bench.server import running_service

PATH = f"/v2/models/{LECTURE}/infer"
RAW = "raw ASGI app"


def run_client(addresses: list[str], requests: int, cpus: str | None) -> dict[str, Any]:
    """``bench.alternating_client`` on ``cpus`` over ``addresses`` (the first is the reference),
    with the lecture model's 1-image FP32 JSON body."""
    with tempfile.TemporaryDirectory() as tmp:
        body_file = Path(tmp) / "body.json"
        body_file.write_bytes(v2_json(1, "FP32", PROBABILITIES))
        argv = ["bench.alternating_client", "--path", PATH, "--body-file", str(body_file),
                "--requests", str(requests)]  # fmt: skip
        for address in addresses:
            argv += ["--address", address]
        return run_module(argv, requests * len(addresses) * 0.005, cpus)


def served_together(
    builds: list[Build], raw: bool, requests: int, place: Placement
) -> dict[str, Any]:
    """Every build (then the raw app, with ``raw``) served on the server's cores of ``place`` at
    once, the client alternating between them from its cores: figures by name, in order."""
    names = [b.name for b in builds] + ([RAW] if raw else [])
    with tempfile.TemporaryDirectory() as tmp, contextlib.ExitStack() as stack:
        addresses = []
        for build in builds:
            log = Path(tmp) / f"{build.name}.log"
            env = {**BASE_ENV, **build.env}
            server = stack.enter_context(
                running_service(env, log, cpus=place.server_cpus, checkout=build.checkout)
            )
            addresses.append(server.address)
        if raw:
            group, port = start_ceiling(place, False, Path(tmp) / "raw.log")
            stack.callback(group.stop)
            addresses.append(f"127.0.0.1:{port}")
        found = run_client(addresses, requests, place.client_cpus)
    servers = [
        {"name": name, **{k: v for k, v in s.items() if k != "address"}}
        for name, s in zip(names, found["servers"], strict=True)
    ]
    return {"requests": found["requests"], "servers": servers}


def against_raw(env: dict[str, str], requests: int, place: Placement) -> dict[str, Any]:
    """This checkout's service (with ``env``) and the raw ASGI app, alternating: what ``bench
    peers`` records beside the one-client target."""
    build = Build("service", ROOT, dict(env))
    return served_together([build], True, requests, place)


def report(found: dict[str, Any]) -> list[str]:
    lines = [f"{found['requests']} turns, one request to each server per turn"]
    for s in found["servers"]:
        lines.append(
            f"{s['name']:16s} p50 {s['p50_ms']:.3f} ms  p90 {s['p90_ms']:.3f}  "
            f"gap to the first {s['gap_us']:+.0f} us (quartiles {s['gap_q1_us']:+.0f}, "
            f"{s['gap_q3_us']:+.0f})"
        )
    return lines


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--build", type=Build.parse, action="append", default=[])
    parser.add_argument("--raw", action="store_true", help="the raw ASGI app too, last")
    parser.add_argument("--requests", type=int, default=8000, help="timed turns")


def main(args: argparse.Namespace) -> None:
    if len(args.build) + args.raw < 2:
        raise SystemExit("alternate needs two servers: --build twice, or --build and --raw")
    found = served_together(args.build, args.raw, args.requests, pinned())
    print(json.dumps(found))
    print("\n".join(report(found)))
