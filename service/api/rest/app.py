"""``create_app(settings)``: assembles the REST service over a ``DataPlane`` built from the
settings. The HTTP helpers (``http_io``), the middleware, the routes and the fast path live in
modules of their own; this module only puts them together, with the lifespan and the exception
handlers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from inspect import signature
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from service.api.rest.allowed_hosts import AllowedHosts, allowed_hosts
from service.api.rest.fast_path import FastInfer
from service.api.rest.http_io import (
    JSONResponse,
    error_response,
    internal_error_response,
    serving_error_response,
)
from service.api.rest.middleware import BodyLimit, RequestMetrics, RuntimeLeases
from service.api.rest.request_id import RequestId
from service.api.rest.routes import (
    api_docs,
    explore,
    feedback,
    inspect,
    log_settings,
    model_extensions,
    model_repository,
    monitor,
    ops,
    shared_memory,
    trace_settings,
    v1,
    v2,
)
from service.core.errors import ServingError
from service.dataplane.dataplane import SERVER_NAME, SERVER_VERSION, DataPlane
from service.engine.scrapes import SharedScrape
from service.settings import Settings


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts) or "invalid request"


async def _serving_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ServingError)
    return serving_error_response(exc, request.method, request.url.path)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, _validation_message(exc))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == HTTPStatus.NOT_FOUND and message == "Not Found":
        message = f"no endpoint at {request.url.path}"
    response = error_response(exc.status_code, message)
    response.headers.update(exc.headers or {})  # 405's Allow (RFC 9110)
    return response


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    return internal_error_response(request.method, request.url.path, exc)


def _no_native_telemetry() -> dict[str, Any]:
    """FastAPI's own OpenTelemetry off, where this FastAPI has it. The service traces what
    Triton's trace extension asks (``trace_settings``: sampled, off by default), and FastAPI's
    check of the global providers on every request cost about 11 us (docs/benchmarks.md, "One
    client's p50")."""
    if "telemetry" not in signature(FastAPI).parameters:
        return {}
    off = {"tracing": False, "metrics": False, "logs": False, "auto_configure": False}
    return {"telemetry": off}


class ServiceApp(FastAPI):
    """FastAPI, with v2 infer requests handed to ``fast_infer`` before any of FastAPI's layers
    (``fast_path``); everything else, the lifespan included, goes through FastAPI."""

    fast_infer: FastInfer | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        fast = self.fast_infer
        if fast is not None and fast.takes(scope):
            scope["app"] = self  # as Starlette sets it
            await fast(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def create_app(settings: Settings) -> ServiceApp:
    """The service for ``settings``; the repository loads when the app starts (lifespan)."""
    plane = DataPlane(settings)
    scrapes = SharedScrape(plane.metrics.render)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await plane.start()
        try:
            yield
        finally:
            scrapes.close()
            await plane.stop()

    app = ServiceApp(
        title=SERVER_NAME,
        version=SERVER_VERSION,
        summary="CIFAR-10 image classification over the Open Inference Protocol and plain REST.",
        default_response_class=JSONResponse,
        lifespan=lifespan,
        docs_url=None,  # served by routes/api_docs.py from a package, not a CDN, and
        openapi_url=None,  # the document too, encoded once; ReDoc has no packaged copy
        redoc_url=None,
        **_no_native_telemetry(),
    )
    app.state.dataplane, app.state.scrapes = plane, scrapes  # scrapes: /metrics (routes/ops.py)
    app.add_exception_handler(ServingError, _serving_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)

    routers = (
        model_extensions,
        v2,
        model_repository,
        shared_memory,
        v1,
        feedback,
        monitor,
        inspect,
        explore,
        ops,
    )
    for module in (*routers, api_docs, log_settings, trace_settings):  # the last two: Triton's
        app.include_router(module.router)  # logging and trace extensions
    routes = {getattr(r, "path", ""): r for r in v2.router.routes}  # the infer routes' documents

    # Added last is outermost: metrics see every response, including the body limit's 413. The
    # fast path goes ahead of all of them to skip FastAPI, and wraps itself in the same five.
    app.add_middleware(RuntimeLeases)
    limit, timeout_s = settings.max_request_bytes, settings.body_timeout_s
    app.add_middleware(BodyLimit, limit=limit, timeout_s=timeout_s, budget=plane.body_budget)
    app.add_middleware(RequestMetrics, metrics=plane.metrics)
    hosts = allowed_hosts(settings)
    if hosts is not None:
        app.add_middleware(AllowedHosts, hosts=hosts)
    app.add_middleware(RequestId)  # outermost: every response carries X-Request-ID
    app.fast_infer = FastInfer(plane, routes, hosts)
    return app
