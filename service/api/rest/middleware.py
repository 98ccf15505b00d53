"""ASGI middleware around every route: the body limit and timeout, request metrics, and the
version lease that keeps a model open until its answer is sent."""

from __future__ import annotations

import asyncio
import time
from http import HTTPStatus

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.rest.http_io import body_too_large, error_response
from service.core.errors import RequestTimeout
from service.dataplane.dataplane import request_scope
from service.engine.metrics import Metrics


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
                message = body_too_large(self.limit).message
                response = error_response(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, message)
                await response(scope, receive, send)
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
                raise body_too_large(self.limit)
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
    version is swapped in meanwhile (see ``request_scope``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        with request_scope():
            await self.app(scope, receive, send)
