"""One client sending one request at a time, alternating between servers: each turn sends the
same request to every server in order (the order rotated each turn), waiting for each
answer, so the servers' latencies are taken at the same moments of the machine. Prints one JSON
line: each server's p50/p90/p99 and the median (and quartiles) of its latency minus the first
server's in the same turn.

    python -m bench.alternating_client --address 127.0.0.1:8000 --address 127.0.0.1:8001 \
        --path /v2/models/cifar10_cnn/infer --body-file body.json --requests 8000

Why: on this shared machine the speed swings by a third within minutes, so two servers measured
one after the other (even in rounds taking turns) differ by 0.1 ms that neither caused; the
median of paired differences resolves a few microseconds (two identical servers: 0 us).
Blocking sockets and prebuilt request bytes keep the client's own cost small and the same for
every server.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import time
from pathlib import Path
from typing import Any

from bench.loadgen import build_request, parse_head

WARM_UP_TURNS = 300


class Connection:
    """A keep-alive HTTP/1.1 connection that answers one request at a time."""

    def __init__(self, address: str, request: bytes) -> None:
        host, _, port = address.rpartition(":")
        self.address, self.request = address, request
        self.sock = socket.create_connection((host, int(port)), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def exchange(self) -> float:
        """Send the request, read the whole answer; seconds from send to its last byte."""
        start = time.perf_counter()
        self.sock.sendall(self.request)
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        head, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
        status, length, _ = parse_head(head)
        if status != 200 or length < 0:  # the service and the raw app always give a length
            raise SystemExit(f"{self.address} answered {head[:200]!r}")
        while len(self.buffer) < length:
            self._receive()
        self.buffer = self.buffer[length:]
        return time.perf_counter() - start

    def _receive(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise SystemExit(f"{self.address} closed the connection")
        self.buffer += chunk


def alternate(connections: list[Connection], turns: int) -> list[list[float]]:
    """Each connection's latencies over ``turns`` turns, the order rotated by one each turn, so
    that every server takes every place (and follows every other) equally often: a server's
    request runs faster right after its own than after another server's."""
    latencies: list[list[float]] = [[] for _ in connections]
    order = list(enumerate(connections))
    for turn in range(turns):
        shift = turn % len(order)
        for index, connection in order[shift:] + order[:shift]:
            latencies[index].append(connection.exchange())
    return latencies


def summary(addresses: list[str], latencies: list[list[float]]) -> dict[str, Any]:
    """Each server's percentiles (ms) and its paired gap to the first (us: the median and
    quartiles of its latency minus the first's in the same turn; 0 for the first)."""
    servers = []
    for address, values in zip(addresses, latencies, strict=True):
        cuts = statistics.quantiles(values, n=100)
        differences = [(b - a) * 1e6 for a, b in zip(latencies[0], values, strict=True)]
        q1, _, q3 = statistics.quantiles(differences, n=4)
        servers.append({"address": address, "p50_ms": statistics.median(values) * 1e3,
                        "p90_ms": cuts[89] * 1e3, "p99_ms": cuts[98] * 1e3,
                        "gap_us": statistics.median(differences),
                        "gap_q1_us": q1, "gap_q3_us": q3})  # fmt: skip
    return {"requests": len(latencies[0]), "servers": servers}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", action="append", required=True, help="host:port, repeated")
    parser.add_argument("--path", required=True)
    parser.add_argument("--body-file", type=Path, required=True)
    parser.add_argument("--content-type", default="application/json")
    parser.add_argument("--requests", type=int, default=8000, help="timed turns")
    args = parser.parse_args()
    body = args.body_file.read_bytes()
    headers = [f"Content-Type: {args.content_type}"]
    connections = []
    for address in args.address:
        host = address.rpartition(":")[0]
        connections.append(Connection(address, build_request(host, args.path, body, headers)))
    alternate(connections, WARM_UP_TURNS)
    print(json.dumps(summary(args.address, alternate(connections, args.requests))))


if __name__ == "__main__":
    main()
