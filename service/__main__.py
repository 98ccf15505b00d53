"""Serve the model repository over HTTP and gRPC, in one process and event loop (or WORKERS).

    python -m service --host 127.0.0.1 --port 8000 --grpc-port 8001        (or: make serve)

Settings come from the environment (see ``service/settings.py``); the flags override them.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import gc
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import IO, Any

import uvicorn
from fastapi import FastAPI

from service.api.grpc.server import serve_grpc
from service.api.rest.app import create_app
from service.api.rest.connections import http_protocol
from service.core.logs import configure_logging
from service.core.open_files import raise_open_file_limit
from service.engine.last_good import LAST_GOOD
from service.settings import Settings

WORKERS_DIR_PREFIX = "service-workers-"  # then the supervisor's pid and mkdtemp's suffix
ALIVE_FILE = ".alive"  # in WORKERS_DIR: every process of the server holds a shared lock on it
_HELD: list[IO[bytes]] = []  # a worker's lock on it, open for the process's life


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m service", description=__doc__.splitlines()[0])
    parser.add_argument("--host", help="interface to bind (HOST)")
    parser.add_argument("--port", type=int, help="TCP port, 0 for any free one (PORT)")
    parser.add_argument(
        "--grpc-port", type=int, help="gRPC port, 0 for any free one, -1 for none (GRPC_PORT)"
    )
    parser.add_argument("--model-repository", type=Path, help="models folder (MODEL_REPOSITORY)")
    parser.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"])
    parser.add_argument("--workers", help="server processes, or auto (WORKERS)")
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    configure_logging(settings.log_level, settings.log_format)
    # uvicorn drains on SIGTERM (SHUTDOWN_TIMEOUT_S), then re-raises the signal to the handler
    # it found: this one makes a finished graceful shutdown exit 0, not "killed by SIGTERM".
    signal.signal(signal.SIGTERM, _exit_cleanly)
    raise_open_file_limit(settings.max_connections)  # worker processes inherit it
    common = uvicorn_options(settings)
    if settings.workers == 1:
        app = app_for(settings)
        tune_collector(settings)
        uvicorn.run(app, **common)
        return
    # Each worker process builds its own app from the environment, so the flags go there too.
    os.environ.update({key.upper(): str(value) for key, value in overrides.items()})
    os.environ["WORKERS"] = str(settings.workers)  # auto, resolved once for every worker
    with shared_by_workers(settings):
        uvicorn.run(
            "service.__main__:app_from_environment",
            factory=True,
            workers=settings.workers,
            **common,
        )


@contextmanager
def shared_by_workers(settings: Settings) -> Iterator[None]:
    """What the worker processes share, in their environment: WORKERS_DIR (made here unless
    set), prometheus-client's PROMETHEUS_MULTIPROC_DIR inside it, and one gRPC port (with
    GRPC_PORT=0, a free one held here with SO_REUSEPORT so each worker binds the same)."""
    made = settings.workers_dir is None
    if made:
        sweep_dead_workers_dirs(Path(tempfile.gettempdir()))
    prefix = f"{WORKERS_DIR_PREFIX}{os.getpid()}-"
    folder = Path(tempfile.mkdtemp(prefix=prefix)) if made else settings.workers_dir
    assert folder is not None
    metrics = folder / "metrics"
    shutil.rmtree(metrics, ignore_errors=True)  # a previous run's counters would add up
    for stale in ("control.json", "acks", "statistics", LAST_GOOD):
        path = folder / stale
        path.unlink(missing_ok=True) if path.is_file() else shutil.rmtree(path, True)
    metrics.mkdir(parents=True)
    os.environ.update({"WORKERS_DIR": str(folder), "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
    with contextlib.ExitStack() as stack:
        stack.enter_context(hold_alive(folder))
        if settings.grpc_port == 0:
            held = stack.enter_context(socket.socket(_family(settings.host), socket.SOCK_STREAM))
            held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            held.bind((settings.host, 0))  # bound, never listening: it takes no connections
            os.environ["GRPC_PORT"] = str(held.getsockname()[1])
        try:
            yield
        finally:
            if made:
                shutil.rmtree(folder, ignore_errors=True)


def hold_alive(folder: Path) -> IO[bytes]:
    """A shared lock on ``folder/.alive`` for as long as the returned file stays open: the
    supervisor and each worker hold one, so a folder is a live server's while any of them runs
    (a pid says nothing to a process in another pid namespace or on another host)."""
    alive_file = open(folder / ALIVE_FILE, "a+b")  # noqa: SIM115 (held open on purpose)
    fcntl.flock(alive_file, fcntl.LOCK_SH)
    return alive_file


def sweep_dead_workers_dirs(temporary: Path) -> None:
    """Remove the folders of servers killed before they could (SIGKILL, the OOM killer): each
    holds a copy of the models it served (``last_good``). Only this user's, and only one whose
    ``.alive`` no process of its server holds any more (an exclusive lock taken at once)."""
    for folder in temporary.glob(f"{WORKERS_DIR_PREFIX}*-*"):
        try:
            if folder.is_symlink() or folder.stat().st_uid != os.getuid():
                continue
            with open(folder / ALIVE_FILE, "rb") as alive_file:
                fcntl.flock(alive_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                shutil.rmtree(folder, ignore_errors=True)
        except OSError:  # held (a live server), or no .alive: left alone
            continue


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def tune_collector(settings: Settings) -> None:
    """Freeze what start-up made (imports, settings, the app's modules) out of the collector's
    scans and raise its generation-0 threshold (GC_GEN0_THRESHOLD; see docs/benchmarks.md)."""
    if settings.gc_gen0_threshold == 0:
        return
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(settings.gc_gen0_threshold, gen1, gen2)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's keyword arguments for ``settings`` (the tests' real servers use them too)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "log_config": None,  # uvicorn's loggers propagate to ours (request ids, JSON lines)
        "access_log": False,  # no line per request: the fast path's cost, and bodies never
        "timeout_graceful_shutdown": settings.shutdown_timeout_s,
        "timeout_keep_alive": settings.keep_alive_timeout_s,
        "http": http_protocol(settings),  # HEADER_TIMEOUT_S, MAX_CONNECTIONS, WRITE_TIMEOUT_S
        "ws": "none",  # no WebSocket routes: an upgrade is served as the plain request it is
        # X-Forwarded-For sets request.client only from TRUSTED_PROXIES (client_address.py)
        "proxy_headers": bool(settings.trusted_proxies),
        "forwarded_allow_ips": [str(network) for network in settings.trusted_proxies],
    }


def app_for(settings: Settings) -> FastAPI:
    app = create_app(settings)
    if settings.grpc_port >= 0:
        serve_grpc(app)  # started and stopped by the app's lifespan, sharing its state
    return app


def app_from_environment() -> FastAPI:
    """The app of one worker process (``WORKERS`` > 1)."""
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers_dir is not None:  # the server lives while any of its processes does
        _HELD.append(hold_alive(settings.workers_dir))
    app = app_for(settings)
    tune_collector(settings)
    return app


if __name__ == "__main__":
    main()
