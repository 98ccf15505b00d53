"""``X-Request-ID`` on every response: the client's (when usable) or a new one, also set as
``REQUEST_ID`` so log records written while serving the request carry it."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.core.logs import REQUEST_ID, new_request_id, usable_request_id

HEADER = b"x-request-id"


class RequestId:
    """Outermost ASGI middleware (ahead of the fast path), so errors and 413s carry the id too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = None
        for key, value in scope["headers"]:
            if key == HEADER:
                request_id = usable_request_id(value)
                break
        if request_id is None:
            request_id = new_request_id()
        header = (HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
