"""ASGI middleware around every request, the v2 infer fast path's too (``fast_path`` wraps itself
in them): request metrics, the body limit and timeout, and the version lease that keeps a model
open until its answer is sent. Each concern exists here once."""

from __future__ import annotations

import asyncio
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.rest.deadlines import for_running_loop
from service.api.rest.http_io import body_too_large, serving_error_response
from service.core.body_budget import BodyBudget
from service.core.errors import BodyBudgetFull, RequestTimeout, ServingError
from service.dataplane.dataplane import request_scope
from service.engine.metrics import Metrics

CLIENT_CLOSED = 499  # nginx's code for a client that left before the answer, for the metrics
# Methods counted by name; any other is "other": a label per method a client tried (35 methods
# on 37 routes) grew /metrics from 66 to 1,919 series for good.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


class RequestMetrics:
    """Counts requests by route template (``scope["route"]``, which the router or the fast path
    sets) and status, and times them."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = CLIENT_CLOSED  # returned without an answer: the client left before its request

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        except BaseException:
            status = 500 if status == CLIENT_CLOSED else status
            raise
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            method = scope["method"] if scope["method"] in METHODS else "other"
            self.metrics.observe_request(endpoint, method, status, time.perf_counter() - start)


class BodyLimit:
    """413 for bodies over ``limit`` bytes: by Content-Length before reading, else while reading;
    408 for a body not received within ``timeout_s``; 503 for bytes past the process's ``budget``
    (each body's count, as received, held until its answer is sent). Raised from ``receive``, so
    whoever reads the body maps them (the exception handlers, the fast path). The answer counts
    in the budget too (by its Content-Length) until it is sent, or is replaced by a 503 when it
    has no room."""

    def __init__(self, app: ASGIApp, limit: int, timeout_s: float, budget: BodyBudget) -> None:
        self.app, self.limit, self.timeout_s, self.budget = app, limit, timeout_s, budget

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length" and (error := self._refusal(value)) is not None:
                response = serving_error_response(error, scope["method"], scope["path"])
                await response(scope, receive, send)
                return
        received = 0
        body_done = False
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        budget = self.budget

        async def limited() -> Message:
            nonlocal received, body_done
            if body_done:  # after the body only a disconnect comes, whenever it comes
                return await receive()
            message = await _receive_before(receive, deadline, self.timeout_s)
            size = len(message.get("body", b""))
            if received + size > self.limit:
                raise body_too_large(self.limit)
            budget.take(size, received + size)
            received += size
            body_done = not message.get("more_body", False)
            return message

        answer = 0  # the answer's bytes, counted until it is sent
        refused = False

        async def counted(message: Message) -> None:
            nonlocal answer, refused
            if message["type"] == "http.response.start":
                try:
                    answer = budget.take_answer(_content_length(message["headers"]))
                except BodyBudgetFull as error:
                    refused = True
                    response = serving_error_response(error, scope["method"], scope["path"])
                    await response(scope, receive, send)
                    return
            elif refused:  # the answer's body, replaced by the refusal
                return
            await send(message)

        try:
            await self.app(scope, limited, counted)
        finally:
            budget.give(received + answer)

    def _refusal(self, content_length: bytes) -> ServingError | None:
        """A body refused on its declared length, before any of it is read: over the limit, or
        more than the process's budget has room for now (nothing is taken for it yet)."""
        declared = int(content_length) if content_length.isdigit() else -1
        if not 0 <= declared <= self.limit:
            return body_too_large(self.limit)
        return self.budget.refusal(declared, declared)


def _content_length(headers: list[tuple[bytes, bytes]]) -> int:
    for key, value in headers:
        if key == b"content-length":
            return int(value)
    return 0  # streamed: not counted


async def _receive_before(receive: Receive, deadline: float, timeout_s: float) -> Message:
    """The next message of a request body, or ``RequestTimeout`` once the loop's clock passes
    ``deadline`` (a slow client cannot hold a request open). As ``asyncio.timeout_at`` does, but
    on the loop's shared ``Deadlines`` rather than a timer per call."""
    task = asyncio.current_task()
    assert task is not None
    cancelling = task.cancelling()
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    deadlines = for_running_loop()
    key = deadlines.add(deadline, expire)
    try:
        return await receive()
    except asyncio.CancelledError:
        if expired and task.uncancel() <= cancelling:  # ours alone, not a shutdown's too
            raise RequestTimeout(
                f"the request body did not arrive within {timeout_s:g} s"
            ) from None
        raise
    finally:
        deadlines.drop(key)


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
