"""Servers of two worker processes (``python -m service --workers 2`` on loopback) and their
workers: which processes they are, and whether each one serves yet."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil

from tests.support.models import make_model_repo
from tests.support.servers import (
    GRPC_PORT_LINE,
    ServerProcess,
    server_process,
    service_command,
    wait_until,
)


@contextmanager
def two_workers(tmp_path: Path, **env: str) -> Iterator[ServerProcess]:
    """``python -m service --workers 2`` on loopback (``env``: more settings), once both workers
    listen on both ports."""
    env = {
        **os.environ,
        "POLL_INTERVAL_S": "0.5",
        "PROVIDERS": "CPUExecutionProvider",
        "ADMIN_LOOPBACK": "true",
        "LOG_LEVEL": "info",
        "MODEL_REPOSITORY": str(make_model_repo(tmp_path, {"tiny": [1], "other": [1]}, False)),
        **env,
    }
    with server_process(service_command("--workers", "2"), env=env) as running:
        running.wait_ready()
        # The workers log the gRPC port after the parent logged the REST one.
        wait_until(lambda: GRPC_PORT_LINE.search(running.log) is not None, 30, "the gRPC port")
        grpc_port = GRPC_PORT_LINE.search(running.log)
        assert grpc_port is not None
        running = dataclasses.replace(running, grpc_port=int(grpc_port.group(1)))
        wait_until(lambda: len(workers(running)) == 2, 30, "two worker processes")
        wait_until(lambda: all(serving(running, pid) for pid in workers(running)), 60, "both ready")
        yield running


def workers(server: ServerProcess) -> list[int]:
    """The live worker processes (a killed one not yet reaped is a zombie: not counted)."""
    found = []
    for child in psutil.Process(server.process.pid).children():
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:  # a zombie or gone
            continue
    return sorted(found)


def serving(server: ServerProcess, pid: int) -> bool:
    """Whether worker ``pid`` listens on the gRPC port (it does once its models are loaded)."""
    try:
        connections = psutil.Process(pid).connections("tcp")
    except psutil.NoSuchProcess:
        return False
    return any(
        c.status == psutil.CONN_LISTEN and c.laddr.port == server.grpc_port for c in connections
    )
