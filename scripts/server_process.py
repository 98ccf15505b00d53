"""What the scripts that start ``python -m service`` themselves share: a free loopback port and
waiting until the server is ready."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.request


def free_port() -> int:
    """A free loopback port (bound, then released for the server to take)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(
    url: str, server: subprocess.Popen[bytes] | None = None, timeout_s: float = 60
) -> None:
    """Block until ``url``/v2/health/ready answers 200; fail early if ``server`` exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server is not None and server.poll() is not None:
            raise SystemExit(f"the server exited with {server.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the server did not become ready")
