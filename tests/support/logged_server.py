"""``python -m service`` on free loopback ports with its log in a file, for the system suites
(soak, fuzz): they read the log afterwards (a traceback fails them) and the exit status."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.servers import ROOT, free_port, stop, wait_ready


@dataclass
class LoggedServer:
    process: subprocess.Popen[bytes]
    rest_port: int
    grpc_port: int  # -1: none
    log_path: Path
    exit_status: int | None = None  # once stopped (None: it had to be killed)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def logged_server(
    repository: Path, env: Mapping[str, str], log_path: Path, *, grpc: bool = True
) -> Iterator[LoggedServer]:
    """The server over ``repository`` at log level warning, ready; SIGTERM (60 s) on exit."""
    rest_port, grpc_port = free_port(), (free_port() if grpc else -1)
    argv = [sys.executable, "-m", "service", "--port", str(rest_port)]
    argv += ["--grpc-port", str(grpc_port), "--model-repository", str(repository)]
    argv += ["--log-level", "warning", "--workers", "1"]
    with log_path.open("wb") as log:
        process = subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    server = LoggedServer(process, rest_port, grpc_port, log_path)
    try:
        wait_ready(f"{server.url}/v2/health/ready", process)
        yield server
    finally:
        server.exit_status = stop(process, timeout_s=60)
