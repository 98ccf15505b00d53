"""What oversized request heads cost the server (MAX_HEADER_BYTES): ``python -m service`` (one
worker); for each hostile head (a 20 MB header value or name or URL, a million one-line headers,
ten 5 MB header values at once), sent and left unfinished: the server's RSS growth after a
second, the slowest health check meanwhile (a thread asks every 10 ms) and what the senders were
answered. ``--checkout`` serves another working tree (a worktree of an older commit).

    python -m bench hostile-heads [--checkout DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import socket
import tempfile
import threading
import time
from pathlib import Path

from bench.held_bodies import first_line, rss_mib
from bench.results import ROOT
from bench.server import running_service

GET = b"GET /v2/health/live HTTP/1.1\r\nHost: localhost\r\n"
HEADS = {
    "a 20 MB header value": (GET + b"X-A: " + b"a" * 20_000_000, 1),
    "a 20 MB header name": (GET + b"a" * 20_000_000, 1),
    "a million one-line headers (6 MB)": (GET + b"a: b\r\n" * 1_000_000, 1),
    "a 20 MB URL": (b"GET /" + b"a" * 20_000_000, 1),
    "ten 5 MB header values": (GET + b"X-A: " + b"a" * 5_000_000, 10),
}


class HealthWatch:
    """GET /v2/health/live every 10 ms from a thread; ``worst`` is the slowest since reset."""

    def __init__(self, port: int) -> None:
        self.port, self.worst = port, 0.0
        self.stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True).start()

    def _watch(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        while not self.stop.is_set():
            start = time.perf_counter()
            connection.request("GET", "/v2/health/live")
            connection.getresponse().read()
            self.worst = max(self.worst, time.perf_counter() - start)
            time.sleep(0.01)


def send(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    with contextlib.suppress(OSError):  # the server closed it first
        sock.sendall(head)
    return sock


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the tree to serve")


def main(args: argparse.Namespace) -> None:
    env = {"WORKERS": "1", "LOG_LEVEL": "error", "PROVIDERS": "CPUExecutionProvider"}
    print(f"{args.checkout}: each head sent unfinished; RSS growth after 1 s")
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "server.log"
        with running_service(env, log, grpc=False, checkout=args.checkout) as service:
            watch = HealthWatch(service.port)
            for label, (head, clients) in HEADS.items():
                before, watch.worst = rss_mib(service.pgid), 0.0
                socks = [send(service.port, head) for _ in range(clients)]
                time.sleep(1)
                grown = rss_mib(service.pgid) - before
                answers = {first_line(sock) for sock in socks}
                for sock in socks:
                    sock.close()
                print(f"{label}: RSS +{grown:,.0f} MiB, slowest health check "
                      f"{watch.worst * 1e3:.0f} ms, answered {sorted(answers)}")  # fmt: skip
            watch.stop.set()
