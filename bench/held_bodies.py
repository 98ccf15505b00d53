"""What many large bodies held at once cost the server's memory (MAX_BODY_BYTES_IN_FLIGHT):
``python -m service`` (one worker), then N clients each sending all but the last byte of a body
of ``--mib`` MiB to v2 infer and waiting; the server's RSS (every process of it) before and while
they wait, what the clients were answered meanwhile, and how a one-image request fares then.
``--checkout`` serves another working tree (a worktree of an older commit) to compare.

    python -m bench held-bodies [--clients 40] [--mib 60] [--checkout DIR]
"""

from __future__ import annotations

import argparse
import collections
import http.client
import socket
import tempfile
import time
from pathlib import Path

import psutil

from bench.bodies import v2_json
from bench.results import ROOT
from bench.server import running_service

MODEL = "cifar10_cnn"
JSON = {"Content-Type": "application/json"}


def rss_mib(pgid: int) -> float:
    """Resident memory of the server: its first process and every one under it."""
    root = psutil.Process(pgid)
    processes = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in processes) / 2**20


def hold(port: int, size: int) -> tuple[socket.socket, bool]:
    """A connection that sent a head declaring ``size`` bytes and all but the last of them (the
    body all spaces); whether the server stopped reading before that (it refused)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = (
        f"POST /v2/models/{MODEL}/infer HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
    )
    try:
        sock.sendall(head.encode() + b" " * (size - 1))
    except OSError:
        return sock, True
    return sock, False


def first_line(sock: socket.socket) -> str:
    """The status line the server sent on ``sock`` so far, or ``(waiting)``."""
    sock.setblocking(False)
    try:
        return sock.recv(200).split(b"\r\n", 1)[0].decode() or "(closed)"
    except BlockingIOError:
        return "(waiting)"
    except OSError:
        return "(reset)"


def one_image(port: int) -> str:
    """A one-image FP32 JSON v2 request sent now: its status and time."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    start = time.perf_counter()
    connection.request("POST", f"/v2/models/{MODEL}/infer", v2_json(1, "FP32"), JSON)
    status = connection.getresponse().status
    connection.close()
    return f"{status} in {(time.perf_counter() - start) * 1e3:.1f} ms"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--mib", type=int, default=60, help="each body's size (at most 64)")
    parser.add_argument("--checkout", type=Path, default=ROOT, help="the tree to serve")
    parser.add_argument("--settle-s", type=float, default=2.0, help="wait before measuring")


def main(args: argparse.Namespace) -> None:
    env = {"WORKERS": "1", "LOG_LEVEL": "error", "PROVIDERS": "CPUExecutionProvider"}
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "server.log"
        with running_service(env, log, grpc=False, checkout=args.checkout) as service:
            before = rss_mib(service.pgid)
            held = [hold(service.port, args.mib * 2**20) for _ in range(args.clients)]
            time.sleep(args.settle_s)
            holding = rss_mib(service.pgid)
            small = one_image(service.port)
            answers = collections.Counter(first_line(sock) for sock, _ in held)
            for sock, _ in held:
                sock.close()
    cut_short = sum(refused for _, refused in held)
    print(f"{args.checkout}: {args.clients} clients x {args.mib} MiB")
    print(f"server RSS: {before:,.0f} MiB before, {holding:,.0f} MiB while they wait")
    print(f"answers meanwhile: {dict(answers)}; sends cut short: {cut_short}")
    print(f"a one-image request while they wait: {small}")
