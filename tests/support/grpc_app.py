"""A real ``grpc.aio`` server in the test's own process and loop, over an app whose lifespan
runs (so a test can count the server's objects, or its settings can be varied cheaply)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from service.api.grpc.server import start_grpc_server
from service.dataplane.dataplane import DataPlane
from service.settings import Settings
from tests.support.apps import app_client


@asynccontextmanager
async def grpc_in_process(settings: Settings) -> AsyncIterator[tuple[str, DataPlane]]:
    """The address of a started gRPC server for ``settings`` (its port chosen by the system),
    and its data plane."""
    settings = settings.model_copy(update={"grpc_port": 0, "host": "127.0.0.1"})
    async with app_client(settings) as http:
        plane: DataPlane = http._transport.app.state.dataplane  # type: ignore[attr-defined]
        server, port = await start_grpc_server(plane)
        try:
            yield f"127.0.0.1:{port}", plane
        finally:
            await server.stop(0)
