"""What tests that run servers share: free loopback ports, waiting until something holds (a
condition, a URL answering 200), server processes started and stopped (``python -m service``
with the ports it logs read back), and a real server in a thread (``running_server``: REST and
gRPC of one app on free loopback ports, as ``python -m service`` runs them)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import uvicorn
from uvicorn.config import LOGGING_CONFIG

# One implementation for the tests and the scripts that start servers themselves.
from bench.server import free_port as free_port
from service.__main__ import uvicorn_options
from service.api.grpc.server import serve_grpc
from service.api.rest.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]

# The lines `python -m service` logs once it listens (plain or JSON logs alike).
REST_PORT_LINE = re.compile(r"Uvicorn running on http://127\.0\.0\.1:(\d+)")
GRPC_PORT_LINE = re.compile(r"gRPC serving on 127\.0\.0\.1:(\d+)")


def wait_until(
    condition: Callable[[], bool],
    timeout_s: float = 5.0,
    what: str | Callable[[], str] = "",
    interval_s: float = 0.01,
) -> float:
    """Seconds until ``condition()`` held; fails the test after ``timeout_s``, saying ``what``
    (a callable is asked then, so the message can show the last value seen)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start >= timeout_s:
            said = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s} s: {said}")
        time.sleep(interval_s)
    return time.monotonic() - start


def answers_200(url: str) -> bool:
    """Whether a GET of ``url`` answers 200 now (nothing listening counts as no)."""
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_ready(
    url: str,
    process: subprocess.Popen[bytes] | subprocess.Popen[str] | None = None,
    timeout_s: float = 60.0,
    what: str = "the server",
) -> float:
    """Seconds until GET ``url`` answered 200; fails at once if ``process`` exits first."""

    def ready() -> bool:
        if process is not None:
            assert process.poll() is None, f"{what} exited with {process.returncode}"
        return answers_200(url)

    return wait_until(ready, timeout_s, f"{what} never answered {url}", interval_s=0.1)


def stop(
    process: subprocess.Popen[bytes] | subprocess.Popen[str],
    how: signal.Signals = signal.SIGTERM,
    timeout_s: float = 30.0,
) -> int | None:
    """Send ``how`` to a running process and wait for it; killed if it outlives ``timeout_s``.
    Returns its exit status (None if it had to be killed)."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(how)
    try:
        return process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None


def service_command(*args: str) -> list[str]:
    """``python -m service`` on loopback, REST and gRPC on ports the system picks, one worker
    process (``args`` may ask for more: the last ``--workers`` counts), then ``args``."""
    return [sys.executable, "-m", "service", "--host", "127.0.0.1", "--port", "0",
            "--grpc-port", "0", "--workers", "1", *args]  # fmt: skip


@dataclass(frozen=True)
class Running:
    """Where a server on loopback listens: its REST port and its gRPC port (-1: none)."""

    rest_port: int
    grpc_port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.rest_port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def grpc_url(self) -> str:
        assert self.grpc_port > 0, "the server has no gRPC port"
        return f"127.0.0.1:{self.grpc_port}"


@dataclass(frozen=True)
class ServerProcess(Running):
    """A server running as a child process, on the ports it logged. Its stderr is read throughout
    (so the pipe never fills) and kept in ``lines``."""

    process: subprocess.Popen[str]
    lines: list[str]

    @property
    def log(self) -> str:
        """Its stderr so far (all of it once the ``server_process`` block has ended)."""
        return "".join(self.lines)

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Seconds until /v2/health/ready answered 200; fails, with the log, if it exits first."""
        url = f"{self.url}/v2/health/ready"

        def ready() -> bool:
            assert self.process.poll() is None, f"the server exited:\n{self.log[-3000:]}"
            return answers_200(url)

        return wait_until(ready, timeout_s, f"the server never answered {url}", interval_s=0.1)


@contextmanager
def server_process(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    cwd: Path = ROOT,
    timeout_s: float = 60.0,
    how: signal.Signals = signal.SIGTERM,
) -> Iterator[ServerProcess]:
    """Start ``argv`` (a ``python -m service`` command line), wait until it logs the REST port it
    listens on (and the gRPC one, logged before it), and stop it with ``how`` on exit."""
    process = subprocess.Popen(list(argv), env=env, cwd=cwd, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    ports: dict[str, int] = {}
    listening = threading.Event()

    def read() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)
            for name, pattern in (("grpc", GRPC_PORT_LINE), ("rest", REST_PORT_LINE)):
                match = pattern.search(line)
                if match and name not in ports:
                    ports[name] = int(match.group(1))
            if "rest" in ports:
                listening.set()
        listening.set()  # the end of its stderr: it exited

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        listening.wait(timeout_s)
        assert "rest" in ports, f"{' '.join(argv)} did not start:\n{''.join(lines)[-3000:]}"
        yield ServerProcess(ports["rest"], ports.get("grpc", -1), process, lines)
    finally:
        stop(process, how)
        reader.join(timeout=10)


@contextmanager
def running_server(settings: Settings, *, grpc: bool = True) -> Iterator[Running]:
    """``settings`` with host 127.0.0.1 and free ports (gRPC too unless ``grpc`` is False,
    then ``grpc_port`` is -1), in this one process; stopped (gRPC first) on exit."""
    grpc_port = 0 if grpc else -1
    where = {"host": "127.0.0.1", "port": 0, "grpc_port": grpc_port}
    settings = settings.model_copy(update={**where, "workers": 1})  # one process: this one
    app = create_app(settings)
    if grpc:
        serve_grpc(app)
    options = {**uvicorn_options(settings), "log_level": "warning", "log_config": LOGGING_CONFIG}
    config = uvicorn.Config(app, **options)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_until(lambda: server.started or not thread.is_alive(), 30, "the server starting")
    assert server.started, "server did not start"
    rest_port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield Running(rest_port, app.state.grpc_port if grpc else -1)
    finally:
        server.should_exit = True
        thread.join(timeout=15)
