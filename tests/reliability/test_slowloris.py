"""The header-read timeout (HEADER_TIMEOUT_S) on real servers: 2,000 half-open connections that
never finish their request head are all closed soon after the timeout while normal requests keep
being answered; a kept-alive connection's clock starts at its next request's first byte; it holds
with WORKERS=2, whose processes also get the raised open-file limit; gRPC closes connections that
do not finish the HTTP/2 handshake within the same time."""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from service.settings import Settings
from tests.support.models import make_model_repo
from tests.support.servers import (
    Running,
    running_server,
    server_process,
    service_command,
    wait_until,
)
from tests.support.sockets import connect, read_to_end

HEADER_TIMEOUT_S = 2.0
# Allowed past the timeout before a connection must be closed: the test's client and the server
# share one process (the GIL) and two cores with other jobs.
MARGIN_S = 5.0
HALF_OPEN = 2000
HALF_HEAD = b"POST /v2/health/ready HTTP/1.1\r\nHost: localhost\r\nX-Slow: a"  # the line never ends
READY = b"GET /v2/health/ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"


def raise_own_file_limit(needed: int) -> None:
    """This process holds both ends of every connection: raise its soft limit if it is short."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files; the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = make_model_repo(tmp_path_factory.mktemp("slowloris"), lecture=False)
    settings = Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        poll_interval_s=0,
        header_timeout_s=HEADER_TIMEOUT_S,
    )
    with running_server(settings) as running:
        yield running


def get_ready(port: int) -> tuple[bytes, float]:
    """GET /v2/health/ready over a fresh connection: the status line and the seconds it took."""
    started = time.monotonic()
    with connect(port) as sock:
        sock.settimeout(10)
        sock.sendall(READY)
        answer = read_to_end(sock)
    return answer.partition(b"\r\n")[0], time.monotonic() - started


def print_figures(
    opening_s: float,
    opened: dict[socket.socket, float],
    closed: dict[socket.socket, float],
    answers: dict[socket.socket, bytes],
    trickled: int,
    normal: list[tuple[bytes, float]],
) -> None:
    """The run's figures as one JSON line (docs/reliability.md quotes them; pytest -s)."""
    ages = [closed[sock] - opened[sock] for sock in opened]
    latencies = sorted(seconds for _, seconds in normal)
    print(
        json.dumps(
            {
                "half_open": HALF_OPEN,
                "header_timeout_s": HEADER_TIMEOUT_S,
                "opening_s": round(opening_s, 2),
                "closed_after_s": {
                    "min": round(min(ages), 2),
                    "median": round(statistics.median(ages), 2),
                    "max": round(max(ages), 2),
                },
                "all_closed_s_after_last_opened": round(
                    max(closed.values()) - max(opened.values()), 2
                ),
                "answered_408": sum(a.startswith(b"HTTP/1.1 408") for a in answers.values()),
                "bytes_trickled": trickled,
                "normal_requests": len(normal),
                "normal_latency_ms": {
                    "median": round(1000 * statistics.median(latencies), 1),
                    "p95": round(1000 * latencies[int(0.95 * (len(latencies) - 1))], 1),
                    "max": round(1000 * latencies[-1], 1),
                },
            }
        )
    )


def test_2000_half_open_connections_are_closed_and_others_are_served(server: Running) -> None:
    raise_own_file_limit(2 * HALF_OPEN + 1000)
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    closed: dict[socket.socket, float] = {}
    answers: dict[socket.socket, bytes] = {}
    normal: list[tuple[bytes, float]] = []
    trickled = 0

    def close(sock: socket.socket) -> None:
        closed[sock] = time.monotonic()
        selector.unregister(sock)
        sock.close()

    try:
        start = time.monotonic()
        for _ in range(HALF_OPEN):  # non-blocking connects, each sending its half head when up
            sock = socket.socket()
            sock.setblocking(False)
            opened[sock] = time.monotonic()
            sock.connect_ex(("127.0.0.1", server.rest_port))
            selector.register(sock, selectors.EVENT_WRITE)
        while any(key.events == selectors.EVENT_WRITE for key in selector.get_map().values()):
            assert time.monotonic() - start < 30, "connections did not open"
            for key, _ in selector.select(timeout=1):
                sock = key.fileobj  # type: ignore[assignment]
                sock.send(HALF_HEAD)
                selector.modify(sock, selectors.EVENT_READ)
        all_open = time.monotonic()
        slow = list(opened)[::10]  # these keep sending a byte of their endless header line
        last_trickle = 0.0
        deadline = max(opened.values()) + HEADER_TIMEOUT_S + MARGIN_S
        while len(closed) < HALF_OPEN and time.monotonic() < deadline:
            for key, _ in selector.select(timeout=0.05):
                sock = key.fileobj  # type: ignore[assignment]
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                answers[sock] = answers.get(sock, b"") + data
                if not data:
                    close(sock)
            if time.monotonic() - last_trickle >= 0.5:
                last_trickle = time.monotonic()
                for sock in slow:
                    if sock not in closed and sock not in answers:
                        try:
                            sock.send(b"a")
                            trickled += 1
                        except OSError:  # the server closed it meanwhile
                            close(sock)
            normal.append(get_ready(server.rest_port))  # a fresh connection each time
    finally:
        for sock in opened:
            if sock not in closed:
                sock.close()
        selector.close()

    assert len(closed) == HALF_OPEN, f"{HALF_OPEN - len(closed)} half-open connections still open"
    ages = [closed[sock] - opened[sock] for sock in opened]
    assert min(ages) >= HEADER_TIMEOUT_S * 0.9  # closed by the timeout, not by anything sooner
    assert max(ages) <= HEADER_TIMEOUT_S + MARGIN_S
    heads = {answer.partition(b"\r\n")[0] for answer in answers.values() if answer}
    assert heads <= {b"HTTP/1.1 408 Request Timeout"}, heads
    assert trickled > 0
    assert len(normal) >= 10
    assert {status for status, _ in normal} == {b"HTTP/1.1 200 OK"}
    print_figures(all_open - start, opened, closed, answers, trickled, normal)


def test_a_connection_sending_nothing_is_closed_silently(server: Running) -> None:
    with connect(server.rest_port) as sock:
        started = time.monotonic()
        assert read_to_end(sock) == b""
        assert HEADER_TIMEOUT_S * 0.9 <= time.monotonic() - started <= HEADER_TIMEOUT_S + MARGIN_S


def test_a_kept_alive_connection_gets_the_timeout_from_its_next_requests_first_byte(
    server: Running,
) -> None:
    """The next request starts after 1.5 s of keep-alive idling (under KEEP_ALIVE_TIMEOUT_S); its
    head never ends, and the 408 comes a full HEADER_TIMEOUT_S after its first byte."""
    with connect(server.rest_port) as sock:
        sock.sendall(READY.replace(b"Connection: close\r\n", b""))
        first = sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200"), first
        time.sleep(1.5)
        sock.sendall(HALF_HEAD)
        started = time.monotonic()
        answer = read_to_end(sock)
        waited = time.monotonic() - started
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 408 Request Timeout"
    assert b"connection: close" in rest
    assert b"did not arrive within 2 s" in rest
    assert HEADER_TIMEOUT_S * 0.9 <= waited <= HEADER_TIMEOUT_S + MARGIN_S


def test_grpc_closes_connections_that_do_not_finish_the_http2_handshake(server: Running) -> None:
    """gRPC's own handshake timeout is 120 s; HEADER_TIMEOUT_S replaces it."""
    with connect(server.grpc_port) as sock:
        sock.sendall(b"PRI * HTTP/2.0\r\n")  # half the connection preface, no SETTINGS
        started = time.monotonic()
        read_to_end(sock)  # the server's SETTINGS, then the close
        waited = time.monotonic() - started
    assert HEADER_TIMEOUT_S * 0.9 <= waited <= HEADER_TIMEOUT_S + MARGIN_S


def test_workers_get_the_timeout_and_the_raised_open_file_limit(tmp_path: Path) -> None:
    """``python -m service`` with WORKERS=2, started under a soft limit of 1,024 open files: the
    worker processes inherit the raised limit, and each closes half-open connections."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 1024:
        pytest.skip(f"the hard open-file limit ({hard}) leaves nothing to raise")
    env = {
        **os.environ,
        "HEADER_TIMEOUT_S": "1",
        "POLL_INTERVAL_S": "0",
        "PROVIDERS": "CPUExecutionProvider",
        "MODEL_REPOSITORY": str(make_model_repo(tmp_path, lecture=False)),
    }
    command = service_command("--grpc-port", "-1", "--workers", "2")
    low_limit = ["sh", "-c", 'ulimit -Sn 1024 && exec "$0" "$@"', *command]
    with server_process(low_limit, env=env) as server:
        server.wait_ready()

        def workers() -> list[psutil.Process]:
            children = psutil.Process(server.process.pid).children()
            return [child for child in children if "spawn_main" in " ".join(child.cmdline())]

        wait_until(lambda: len(workers()) == 2, 30, "two worker processes")
        assert "open-file limit raised from 1024" in server.log
        for worker in workers():
            assert worker.rlimit(psutil.RLIMIT_NOFILE)[0] > 1024
        socks = [connect(server.rest_port) for _ in range(8)]  # the kernel spreads them
        try:
            for sock in socks:
                sock.sendall(HALF_HEAD)
            for sock in socks:
                assert read_to_end(sock).startswith(b"HTTP/1.1 408")
        finally:
            for sock in socks:
                sock.close()


def test_raise_open_file_limit_lifts_the_soft_limit_to_the_hard_one() -> None:
    """In a child process (the limit is process-wide) whose soft limit starts at 256."""
    code = (
        "import resource\n"
        "from service.core.open_files import raise_open_file_limit\n"
        "soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))\n"
        "print(raise_open_file_limit(64), *resource.getrlimit(resource.RLIMIT_NOFILE))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    returned, soft, hard = (int(v) for v in out)
    assert returned == soft
    assert soft == (hard if hard != resource.RLIM_INFINITY else 2 * 64 + 1024)
