"""The Open Inference Protocol over gRPC (``inference.GRPCInferenceService``), beside REST.

    python -m service        (REST on PORT, gRPC on GRPC_PORT, default 8001; -1: no gRPC)

A thin adapter like the REST app: ``servicer`` asks the data plane, ``codec`` translates the
protocol's published messages (compiled in ``tritonclient.grpc``), ``handlers`` binds the methods.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import FrameType
from typing import Any

import grpc
from fastapi import FastAPI

from service.api.grpc.handlers import method_handlers
from service.api.grpc.servicer import InferenceServicer
from service.dataplane.dataplane import DataPlane
from service.settings import Settings

log = logging.getLogger(__name__)


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """grpc-core's bounds on connections and streams, from ``settings`` (an age or idle time of 0
    leaves grpc's default: none)."""
    options = [
        ("grpc.max_concurrent_streams", settings.grpc_max_concurrent_streams),
        ("grpc.max_allowed_incoming_connections", settings.max_connections),
        # A connection that has not finished its HTTP/2 handshake (grpc's default: 120 s).
        ("grpc.server_handshake_timeout_ms", round(settings.header_timeout_s * 1000)),
    ]
    if settings.grpc_max_connection_age_ms:
        options.append(("grpc.max_connection_age_ms", settings.grpc_max_connection_age_ms))
        grace = settings.grpc_max_connection_age_grace_ms
        options.append(("grpc.max_connection_age_grace_ms", grace))
    if settings.workers > 1:  # every worker listens on GRPC_PORT; the kernel spreads connections
        options.append(("grpc.so_reuseport", 1))
    if settings.grpc_max_connection_idle_ms:
        options.append(("grpc.max_connection_idle_ms", settings.grpc_max_connection_idle_ms))
    if not settings.grpc_compression:  # identity alone (bit 0): gzip and deflate refused unread
        options.append(("grpc.compression_enabled_algorithms_bitset", 1))
    return options


async def start_grpc_server(plane: DataPlane) -> tuple[Any, int]:
    """A started ``grpc.aio`` server on ``HOST:GRPC_PORT`` and the port it bound."""
    settings = plane.settings
    limit = (
        settings.max_request_bytes
    )  # the REST body limit; over it gRPC answers RESOURCE_EXHAUSTED
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
            *connection_options(settings),
        ],
    )  # no maximum_concurrent_rpcs: it counts calls that sent nothing (servicer's admission)
    server.add_generic_rpc_handlers((method_handlers(InferenceServicer(plane)),))
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    try:
        port: int = server.add_insecure_port(f"{host}:{settings.grpc_port}")
    except RuntimeError as exc:
        raise RuntimeError(f"gRPC cannot bind {host}:{settings.grpc_port} ({exc})") from None
    await server.start()
    return server, port


def stop_with_rest(server: Any, grace_s: float) -> None:
    """On SIGTERM or SIGINT, ``server`` stops taking calls when uvicorn stops taking connections,
    its calls in flight getting ``grace_s``, instead of after REST's drain (the lifespan's end):
    a stopping replica refuses new work on both protocols alike. uvicorn's handler is called as
    before, and puts itself back when it stops. Only where signals are handled: the main thread
    (a test's server in a thread keeps uvicorn's behaviour, which has none)."""
    if threading.current_thread() is not threading.main_thread():
        return
    loop = asyncio.get_running_loop()
    stopping: list[asyncio.Task[None]] = []  # held, so the task is not collected

    def stop() -> None:
        if not stopping:
            stopping.append(loop.create_task(server.stop(grace_s)))

    for number in (signal.SIGINT, signal.SIGTERM):
        previous = signal.getsignal(number)
        if not callable(previous):
            continue

        def handler(signum: int, frame: FrameType | None, then: Any = previous) -> None:
            loop.call_soon_threadsafe(stop)
            then(signum, frame)

        signal.signal(number, handler)


def serve_grpc(app: FastAPI) -> FastAPI:
    """Run the gRPC service inside ``app``'s lifespan, on the same event loop and ``ServiceState``:
    it opens once the models are loaded and closes before they are (calls in flight get
    ``SHUTDOWN_TIMEOUT_S``), refusing new calls from the moment REST does (``stop_with_rest``).
    The bound port is ``app.state.grpc_port``."""
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(scope_app: Any) -> AsyncIterator[Any]:
        async with inner(scope_app) as value:
            plane: DataPlane = app.state.dataplane
            server, port = await start_grpc_server(plane)
            app.state.grpc_port = port
            stop_with_rest(server, plane.settings.shutdown_timeout_s)
            log.info("gRPC serving on %s:%d", plane.settings.host, port)
            try:
                yield value
            finally:
                await server.stop(plane.settings.shutdown_timeout_s)

    app.router.lifespan_context = lifespan
    return app
