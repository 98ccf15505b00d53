"""``create_app(settings)``: the FastAPI app, its lifespan (loading and watching the models), error
handling."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.codec import dumps
from service.core.errors import (
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    Unauthorized,
    UnsupportedMediaType,
)
from service.core.version_policy import VersionPolicy
from service.engine.metrics import Metrics
from service.engine.repository import ModelRepository, lease_scope
from service.engine.runtime import ModelRuntime, RuntimeOptions
from service.settings import Settings

log = logging.getLogger(__name__)

VERSION = "0.1.0"
RETRY_AFTER_S = "1"  # what an overloaded server tells clients to wait (seconds)


class JSONResponse(StarletteJSONResponse):
    """orjson-encoded JSON (numpy arrays included). A Starlette ``JSONResponse`` so the OpenAPI
    document gives routes their JSON schemas (another class would be documented as a string)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps(content)


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def serving_error_response(exc: ServingError, method: str, path: str) -> JSONResponse:
    """The one mapping of the project's errors to HTTP: status, ``{"error": ...}``, headers."""
    if exc.status >= 500 and not isinstance(exc.__cause__, ServingError):
        log.warning("%s %s: %s", method, path, exc.message)
    response = error_response(exc.status, exc.message)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, Overloaded):
        response.headers["Retry-After"] = RETRY_AFTER_S
    elif isinstance(exc, PayloadTooLarge | RequestTimeout):
        response.headers["Connection"] = "close"  # the rest of the body is not worth reading
    return response


@dataclass
class ServiceState:
    """What the routes need, hung on ``app.state.service``."""

    settings: Settings
    repository: ModelRepository
    metrics: Metrics

    async def infer(
        self, runtime: ModelRuntime, pixels: np.ndarray, outputs: Sequence[str] | None = None
    ) -> dict[str, np.ndarray]:
        """Run one validated batch; the single place a request meets a model."""
        limit = self.settings.max_images_per_request
        if pixels.shape[0] > limit:
            raise PayloadTooLarge(f"{pixels.shape[0]} images, more than the limit of {limit}")
        return await runtime.infer(pixels, outputs)


def service_state(request: Request) -> ServiceState:
    state: ServiceState = request.app.state.service
    return state


class BodyLimit:
    """413 for bodies over ``limit`` bytes: by Content-Length before reading, else while reading;
    408 for a body not received within ``timeout_s``."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float) -> None:
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and (not value.isdigit() or int(value) > self.limit):
                message = f"the request body is over the limit of {self.limit} bytes"
                await error_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)(
                    scope, receive, send
                )
                return
        received = 0
        body_done = False
        deadline = asyncio.get_running_loop().time() + self.timeout_s

        async def limited() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect comes, whenever it comes
                return await receive()
            message = await receive_body_message(receive, deadline, self.timeout_s)
            received += len(message.get("body", b""))
            if received > self.limit:
                raise PayloadTooLarge(f"the request body is over the limit of {self.limit} bytes")
            body_done = not message.get("more_body", False)
            return message

        await self.app(scope, limited, send)


async def receive_body_message(receive: Receive, deadline: float, timeout_s: float) -> Message:
    """The next message of a request body, or ``RequestTimeout`` once the loop's clock passes
    ``deadline`` (a slow client cannot hold a request open)."""
    try:
        async with asyncio.timeout_at(deadline):
            return await receive()
    except TimeoutError:
        raise RequestTimeout(f"the request body did not arrive within {timeout_s:g} s") from None


class RequestMetrics:
    """Counts requests by route template and status, and times them."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(endpoint, scope["method"], str(status)).inc()
            self.metrics.request_latency.labels(endpoint).observe(time.perf_counter() - start)


class RuntimeLeases:
    """A model version a request takes stays open until its response is sent, even if a newer
    version is swapped in meanwhile (see ``lease_scope``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with lease_scope():
            await self.app(scope, receive, send)


def is_json_type(content_type: str | None) -> bool:
    """JSON, or no content type at all (curl -d without -H)."""
    media_type = (content_type or "").split(";")[0].strip().lower()
    return media_type in ("", "application/json") or media_type.endswith("+json")


def is_json(request: Request) -> bool:
    return is_json_type(request.headers.get("content-type"))


async def read_json_body(request: Request) -> bytes:
    """The body of a JSON endpoint; another content type is a 415."""
    if not is_json(request):
        raise UnsupportedMediaType(
            f"expected application/json, got {request.headers.get('content-type')!r}"
        )
    return await request.body()


def _validation_message(exc: RequestValidationError) -> str:
    parts = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where}: {error.get('msg', 'invalid')}" if where else error.get("msg", ""))
    return "; ".join(parts) or "invalid request"


def create_app(settings: Settings) -> FastAPI:
    """The service for ``settings``; the repository loads when the app starts (lifespan)."""
    from service.api.request_id import RequestId
    from service.api.routes import explore, inspect, model_repository, ops, v1, v2

    metrics = Metrics()
    options = RuntimeOptions(
        providers=tuple(settings.providers),
        intra_op_threads=settings.intra_op_threads
        or max(1, len(os.sched_getaffinity(0)) // settings.workers),
        inter_op_threads=settings.inter_op_threads,
        allow_spinning=settings.ort_allow_spinning,
        graph_optimization_level=settings.graph_optimization_level,
        warm_up=settings.warm_up,
        dynamic_batching=settings.dynamic_batching,
        max_batch_size=settings.max_batch_size,
        max_batch_delay_ms=settings.max_batch_delay_ms,
        max_queue_images=settings.max_queue_images,
        require_providers=settings.require_providers,
        on_batch=metrics.observe_batch,
    )
    policy = VersionPolicy.parse(settings.version_policy)
    repository = ModelRepository(settings.model_repository, options, policy)
    metrics.track_providers(repository.provider_use)
    state = ServiceState(settings, repository, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await asyncio.to_thread(repository.load)
        watcher = None
        if settings.poll_interval_s > 0:
            watcher = asyncio.create_task(repository.watch(settings.poll_interval_s))
        try:
            yield
        finally:
            if watcher is not None:
                watcher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watcher
            await asyncio.to_thread(repository.close)  # waits for a poll still loading

    app = FastAPI(
        title="cifar-serve",
        version=VERSION,
        summary="CIFAR-10 image classification over the Open Inference Protocol and plain REST.",
        default_response_class=JSONResponse,
        lifespan=lifespan,
    )
    app.state.service = state

    async def serving_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ServingError)
        return serving_error_response(exc, request.method, request.url.path)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        return error_response(HTTPStatus.UNPROCESSABLE_ENTITY, _validation_message(exc))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == HTTPStatus.NOT_FOUND and message == "Not Found":
            message = f"no endpoint at {request.url.path}"
        response = error_response(exc.status_code, message)
        response.headers.update(exc.headers or {})  # 405's Allow (RFC 9110)
        return response

    async def unexpected_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error")

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)

    # Added last is outermost: metrics see every response, including the body limit's 413.
    app.add_middleware(RuntimeLeases)
    app.add_middleware(
        BodyLimit, limit=settings.max_request_bytes, timeout_s=settings.body_timeout_s
    )
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    if settings.v2_fast_path:
        from service.api.fast_path import FastInfer

        app.add_middleware(FastInfer, state=state)  # ahead of every layer above
    app.add_middleware(RequestId)  # outermost: every response carries X-Request-ID

    for module in (v2, model_repository, v1, inspect, explore, ops):
        app.include_router(module.router)
    return app
