"""The one server helper of the benchmarks: a free loopback port, a child process in a process
group of its own (stopped as a whole), and ``python -m service`` started and waited for."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from bench.placement import taskset
from bench.results import ROOT


def free_port() -> int:
    """A free loopback port (bound, then released for the server to take)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(
    url: str, process: subprocess.Popen[bytes] | None = None, timeout_s: float = 60
) -> None:
    """Block until ``url`` (a base URL: /v2/health/ready is asked; or a full URL ending in
    ``/ready``) answers 200; fail early if ``process`` exits."""
    target = url if url.endswith("/ready") else f"{url}/v2/health/ready"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with {process.returncode} before it was ready")
        try:
            with urllib.request.urlopen(target, timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{target} did not answer 200")


class Group:
    """A child process in a session (process group) of its own, its output in ``log``; stopped as
    a whole, so the workers a server forks go with it."""

    def __init__(self, argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> None:
        self.log = log
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                argv,
                env={**os.environ, **env},
                stdout=sink,
                stderr=subprocess.STDOUT,
                cwd=cwd,
                start_new_session=True,
            )

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL to whatever is left of it after 20 s."""
        pgid = self.process.pid
        for sig, grace in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self.process.poll()
                try:
                    os.killpg(pgid, 0)  # anyone left in the group?
                except ProcessLookupError:
                    return
                time.sleep(0.1)


def start(
    argv: list[str],
    env: dict[str, str],
    port: int,
    log: Path,
    wait_s: float,
    model: str = "",
    cwd: Path = ROOT,
) -> Group:
    """Start ``argv`` (in ``cwd``) in its own group; return once it is ready on ``port`` (and
    ``model`` is, if given: Triton says it is ready before it has loaded its models)."""
    group = Group(argv, env, log, cwd)
    try:
        wait_ready(f"http://127.0.0.1:{port}", group.process, wait_s)
        if model:
            url = f"http://127.0.0.1:{port}/v2/models/{model}/ready"
            wait_ready(url, group.process, wait_s)
    except SystemExit as exc:
        group.stop()
        raise SystemExit(f"{exc}; its log:\n{log.read_text()[-4000:]}") from None
    return group


@dataclass(frozen=True)
class Service:
    """Where a started ``python -m service`` listens (gRPC port -1: none)."""

    port: int
    grpc_port: int
    pgid: int = 0  # its process group: every process of the server

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"


def service_argv(port: int, grpc_port: int) -> list[str]:
    """``python -m service`` on loopback: REST on ``port``, gRPC on ``grpc_port`` (-1: none)."""
    return [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", str(port),
            "--grpc-port", str(grpc_port)]  # fmt: skip


@contextmanager
def running_service(
    env: dict[str, str],
    log: Path,
    *,
    grpc: bool = True,
    wait_s: float = 120,
    settle_s: float = 0,
    cpus: str | None = None,
    checkout: Path = ROOT,
) -> Iterator[Service]:
    """``python -m service`` with ``env`` on free loopback ports, ready, stopped on the way out.
    ``settle_s``: extra seconds after ready (with WORKERS > 1 the other workers finish starting
    meanwhile; uvicorn's workers share one socket, so the port is fixed up front). ``cpus``: the
    server and everything it starts pinned there (taskset's list). ``checkout``: the working
    tree whose ``service`` runs (another one's, to compare two commits)."""
    port, grpc_port = free_port(), free_port() if grpc else -1
    argv = taskset(cpus, service_argv(port, grpc_port))
    group = start(argv, env, port, log, wait_s, cwd=checkout)
    try:
        time.sleep(settle_s)
        yield Service(port, grpc_port, group.process.pid)
    finally:
        group.stop()
