"""Serving replicas: throughput of 1 and 2 api processes behind nginx (deploy/nginx/nginx.conf, as
``docker compose up --scale api=N`` runs it), beside one server with WORKERS=1 and WORKERS=2.

    python scripts/bench_replicas.py [--seconds 5] [--concurrency 64]

Each replica is ``python -m service`` with WORKERS=1 on its own loopback ports; nginx is Debian's
(``make nginx``); load comes from ``scripts/loadgen.py`` in its own process. Prints a Markdown
table (docs/scaling.md holds the measured one).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bench_serve import (  # noqa: E402
    MODEL,
    Scenario,
    load,
    start_server,
    v2_binary,
    v2_json,
)
from scripts.nginx_local import find_nginx, nginx_command  # noqa: E402
from scripts.server_process import free_port, wait_ready  # noqa: E402


@contextmanager
def server(env: dict[str, str], tmp: Path, name: str) -> Iterator[tuple[str, int]]:
    """One ``python -m service``; yields its REST address and gRPC port."""
    grpc = free_port()
    process, address = start_server(env, grpc, tmp / f"{name}.log")
    try:
        yield address, grpc
    finally:
        process.terminate()
        process.wait(timeout=30)


@contextmanager
def balancer(replicas: list[tuple[str, int]], tmp: Path) -> Iterator[str]:
    nginx = find_nginx()
    if nginx is None:
        raise SystemExit("nginx is not installed (make nginx)")
    rest, grpc = free_port(), free_port()
    argv = nginx_command(
        nginx,
        listen={8000: rest, 8001: grpc},
        upstreams={
            8000: [int(address.rsplit(":", 1)[1]) for address, _ in replicas],
            8001: [port for _, port in replicas],
        },
        tmp=tmp / f"nginx-{len(replicas)}",
    )
    process = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        address = f"127.0.0.1:{rest}"
        wait_ready(f"http://{address}", None, 30)
        yield address
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(timeout=15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    infer = f"/v2/models/{MODEL}/infer"
    body, headers = v2_binary(1)
    scenarios = [
        Scenario("v2 UINT8 binary", infer, body, "application/octet-stream", 1, args.concurrency,
                 headers),
        Scenario("v2 FP32 JSON", infer, v2_json(1, "FP32"), "application/json", 1,
                 args.concurrency),
    ]  # fmt: skip
    one = {"WORKERS": "1"}
    rows: list[tuple[str, str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)

        def measure(layout: str, address: str) -> None:
            for scenario in scenarios:
                result = load(address, scenario, args.seconds, tmp)
                rows.append((layout, scenario.label, result))
                print(f"{layout:32} {scenario.label:16} {result['requests_per_s']:8.0f} req/s "
                      f"p50 {result.get('p50_ms', float('nan')):.1f} ms "
                      f"errors {result['errors']}", file=sys.stderr)  # fmt: skip

        with server(one, tmp, "direct-1") as (address, _):
            measure("1 process (WORKERS=1)", address)
        with server({"WORKERS": "2"}, tmp, "direct-2") as (address, _):
            measure("1 server, WORKERS=2", address)
        for n in (1, 2):
            with ExitStack() as stack:
                replicas = [stack.enter_context(server(one, tmp, f"r{i}")) for i in range(n)]
                address = stack.enter_context(balancer(replicas, tmp))
                measure(f"nginx + {n} replica{'s' if n > 1 else ''} (WORKERS=1)", address)

    print(f"| layout | request | req/s | p50 ms | p99 ms | errors |  ({os.cpu_count()} cores)")
    print("|---|---|---:|---:|---:|---:|")
    for layout, label, r in rows:
        print(
            f"| {layout} | {label} | {r['requests_per_s']:.0f} | {r.get('p50_ms', 0):.1f} "
            f"| {r.get('p99_ms', 0):.1f} | {r['errors']} |"
        )


if __name__ == "__main__":
    main()
