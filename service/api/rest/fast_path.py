"""The hot path: ``POST /v2/models/{name}[/versions/{v}]/infer`` answered straight from ASGI.

FastAPI's routing and dependency layers cost more per request than the model itself (about 35 us
per image in a batch here), and even its middleware layers cost about 10 us of a request at 64
clients on one core. ``ServiceApp`` (the FastAPI app ``create_app`` makes) hands an infer request
to ``FastInfer`` before any of FastAPI's layers, and ``FastInfer`` answers it with ``v2_infer``
under the same middleware as every route (the request id, the Host check, request metrics, the
body limit, the version lease), each of them the same class as in the app's own stack; every
other request goes on to FastAPI. This is the one implementation of v2 infer: the FastAPI
routes of these paths only document it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.admin import check_same_site
from service.api.rest.allowed_hosts import AllowedHosts
from service.api.rest.disconnect import unless_disconnected
from service.api.rest.http_io import internal_error_response, serving_error_response
from service.api.rest.infer import HEADER_LENGTH, v2_infer
from service.api.rest.middleware import BodyLimit, RequestMetrics, RuntimeLeases
from service.api.rest.request_id import RequestId
from service.core.errors import ServingError
from service.dataplane.dataplane import DataPlane
from service.dataplane.trace_settings import asgi_carrier

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
ENDPOINT = "/v2/models/{name}/infer"
VERSION_ENDPOINT = "/v2/models/{name}/versions/{version}/infer"
_HEADER_LENGTH = HEADER_LENGTH.encode()
_BROWSER_HEADERS = frozenset({b"origin", b"sec-fetch-site"})


class FastInfer:
    """The v2 infer requests' ASGI app: ``takes`` tells them apart, ``__call__`` answers one.

    ``routes`` maps ``ENDPOINT`` and ``VERSION_ENDPOINT`` to the routes documenting them; the
    matching one goes in ``scope["route"]``, as FastAPI's router puts it, for the metrics.
    ``hosts``: the Host names answered (``allowed_hosts``; None: any), as the app's stack has it.
    """

    def __init__(
        self, plane: DataPlane, routes: Mapping[str, Any], hosts: frozenset[str] | None
    ) -> None:
        self.plane = plane
        self.route, self.version_route = routes[ENDPOINT], routes[VERSION_ENDPOINT]
        settings = plane.settings
        leased = RuntimeLeases(self._answer)
        limit, timeout_s = settings.max_request_bytes, settings.body_timeout_s
        limited = BodyLimit(leased, limit, timeout_s, plane.body_budget)
        served: ASGIApp = RequestMetrics(limited, plane.metrics)
        if hosts is not None:
            served = AllowedHosts(served, hosts)
        self._serve = RequestId(served)  # outermost, as in the app's stack

    def takes(self, scope: Scope) -> bool:
        """Whether ``scope`` is a v2 infer request; if so its path parameters and route are set
        in it, as FastAPI's router sets them."""
        if scope["type"] != "http" or scope["method"] != "POST":
            return False
        match = INFER_PATH.fullmatch(scope["path"])
        if match is None:
            return False
        name, version = match.groups()
        scope["path_params"] = {"name": name, "version": version}
        scope["route"] = self.route if version is None else self.version_route
        return True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A request ``takes`` took: answered, whatever happens (a 500 if something unforeseen
        escapes the middleware: what the app's ServerErrorMiddleware does for its routes)."""
        started = False

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self._serve(scope, receive, watched)
        except Exception as exc:
            if started:
                raise
            await internal_error_response("POST", scope["path"], exc)(scope, receive, send)

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request, past the metrics, the body limit and the lease: read, infer, reply."""
        params = scope["path_params"]
        name, version = params["name"], params["version"]
        content_type = header_length = None
        browser = False  # Origin or Sec-Fetch-Site: a browser's request, maybe another site's
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == _HEADER_LENGTH:
                header_length = value.decode("latin-1")
            elif key in _BROWSER_HEADERS:
                browser = True
        try:
            if browser:
                _refuse_cross_site(scope["headers"])
            body = await _read_body(receive)
            if body is None:  # the client left before sending its request: nobody to answer
                return
            carrier = asgi_carrier(scope["headers"])  # {} unless tracing is on
            with self.plane.trace_settings.request(name, carrier):
                work = v2_infer(
                    self.plane, name, version, body, content_type, header_length, browser
                )
                reply = await unless_disconnected(receive, work)
            if reply is None:  # the client left while its request waited: it never ran
                return
            headers = [
                (b"content-type", reply.media_type.encode()),
                (b"content-length", str(len(reply.body)).encode()),
                *((k.lower().encode(), v.encode()) for k, v in reply.headers.items()),
            ]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": reply.body})
        except ServingError as exc:
            await serving_error_response(exc, "POST", scope["path"])(scope, receive, send)
        except Exception as exc:
            await internal_error_response("POST", scope["path"], exc)(scope, receive, send)


def _refuse_cross_site(headers: list[tuple[bytes, bytes]]) -> None:
    """403 for a browser's cross-site infer (``check_same_site``): any web page can make a
    visitor's browser POST one to a local server, without a Content-Type, naming a local
    client's shared-memory region as its output (which the answer then overwrites)."""
    found = {key: value.decode("latin-1") for key, value in headers}
    check_same_site(found.get(b"sec-fetch-site"), found.get(b"origin"), found.get(b"host"))


async def _read_body(receive: Receive) -> bytes | None:
    """The whole body (``BodyLimit`` bounds it in size and time); None if the client
    disconnects."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
