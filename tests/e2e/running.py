"""A real server for end-to-end tests: REST and gRPC of one app on free loopback ports, in a
thread, as ``python -m service`` runs them (``serve_grpc`` in the app's lifespan)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from service.__main__ import uvicorn_options
from service.api.app import create_app
from service.api.grpc_server import serve_grpc
from service.settings import Settings
from tests.support import Running, wait_until


@contextmanager
def running_server(settings: Settings, *, grpc: bool = True) -> Iterator[Running]:
    """``settings`` with host 127.0.0.1 and free ports (gRPC too unless ``grpc`` is False,
    then ``grpc_port`` is -1); stopped (gRPC first) on exit."""
    grpc_port = 0 if grpc else -1
    settings = settings.model_copy(update={"host": "127.0.0.1", "port": 0, "grpc_port": grpc_port})
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
