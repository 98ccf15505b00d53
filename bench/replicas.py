"""Serving replicas: throughput of 1 and 2 api processes behind nginx (deploy/nginx/nginx.conf, as
``docker compose up --scale api=N`` runs it), beside one server with WORKERS=1 and WORKERS=2.

    python -m bench replicas [--seconds 5] [--concurrency 64] [--no-write]

Each replica is ``python -m service`` with WORKERS=1 on its own loopback ports; nginx is Debian's
(``make nginx``); load comes from ``bench.loadgen`` in its own process. Writes
``docs/results/replicas.json``, from which docs/scaling.md's table is rendered.
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

from bench.nginx import find_nginx, nginx_command
from bench.publish import publish
from bench.serve import Scenario, binary_scenario, fp32_scenario, load
from bench.server import Service, free_port, running_service, wait_ready


@contextmanager
def balancer(replicas: list[Service], tmp: Path) -> Iterator[Service]:
    """Debian's nginx with the compose config in front of ``replicas``, on free ports."""
    nginx = find_nginx()
    if nginx is None:
        raise SystemExit("nginx is not installed (make nginx)")
    front = Service(free_port(), free_port())
    argv = nginx_command(
        nginx,
        listen={8000: front.port, 8001: front.grpc_port},
        upstreams={8000: [r.port for r in replicas], 8001: [r.grpc_port for r in replicas]},
        tmp=tmp / f"nginx-{len(replicas)}",
    )
    process = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    try:
        wait_ready(f"http://{front.address}", None, 30)
        yield front
    finally:
        process.send_signal(signal.SIGQUIT)
        process.wait(timeout=15)


def measure(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    scenarios: list[Scenario] = [
        binary_scenario(1, args.concurrency),
        fp32_scenario(args.concurrency),
    ]
    rows: list[dict[str, Any]] = []
    one = {"WORKERS": "1"}

    def run(layout: str, server: Service) -> None:
        for scenario in scenarios:
            result = load(server, scenario, args.seconds)
            rows.append({"layout": layout, "scenario": scenario.label, **result})
            print(f"{layout:36} {scenario.label:16} {result['requests_per_s']:8.0f} req/s "
                  f"p50 {result['p50_ms']:.1f} ms errors {result['errors']}",
                  file=sys.stderr)  # fmt: skip

    with running_service(one, tmp / "direct-1.log", settle_s=1.0) as server:
        run("1 api process (WORKERS=1), direct", server)
    with running_service({"WORKERS": "2"}, tmp / "direct-2.log", settle_s=1.0) as server:
        run("1 api server, WORKERS=2, direct", server)
    for n in (1, 2):
        with ExitStack() as stack:
            replicas = [
                stack.enter_context(running_service(one, tmp / f"r{i}.log", settle_s=1.0))
                for i in range(n)
            ]
            front = stack.enter_context(balancer(replicas, tmp))
            run(f"nginx + {n} replica{'s' if n > 1 else ''} (WORKERS=1{' each' if n > 1 else ''})",
                front)  # fmt: skip
    return rows


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--no-write", action="store_true", help="print only")


def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as name:
        rows = measure(args, Path(name))
    results = {"seconds": args.seconds, "concurrency": args.concurrency,
               "cores": os.cpu_count(), "rows": rows}  # fmt: skip
    publish("replicas", results, args.no_write)
