"""The hot path: ``POST /v2/models/{name}[/versions/{v}]/infer`` answered straight from ASGI.

FastAPI's routing, dependency and middleware layers cost more per request than the model itself
(about 35 us per image in a batch here). This front door recognises the infer paths with one
regular expression and does what those layers would: the body limit, the version lease, the error
mapping and the request metrics, then calls the same ``v2_infer`` as the documented route.
Every other request goes on to the FastAPI app unchanged.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from http import HTTPStatus

from starlette.types import ASGIApp, Receive, Scope, Send

from service.api.rest.http_io import body_too_large, error_response, serving_error_response
from service.api.rest.infer import HEADER_LENGTH, v2_infer
from service.api.rest.middleware import receive_body_message
from service.core.errors import ServingError
from service.dataplane.dataplane import DataPlane, request_scope

log = logging.getLogger(__name__)

INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
CLIENT_CLOSED = 499  # nginx's code for a client that left before the answer, for the metrics
ENDPOINT = "/v2/models/{name}/infer"
VERSION_ENDPOINT = "/v2/models/{name}/versions/{version}/infer"


class FastInfer:
    """ASGI middleware that serves v2 infer itself and passes everything else on."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane
        self.limit = plane.settings.max_request_bytes
        self.timeout_s = plane.settings.body_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST":
            match = INFER_PATH.fullmatch(scope["path"])
            if match is not None:
                await self._serve(scope, receive, send, match.group(1), match.group(2))
                return
        await self.app(scope, receive, send)

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, name: str, version: str | None
    ) -> None:
        start = time.perf_counter()
        content_type = header_length = None
        declared = -1
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value.decode("latin-1")
            elif key == b"content-length":
                declared = int(value) if value.isdigit() else self.limit + 1
            elif key == HEADER_LENGTH.encode():
                header_length = value.decode("latin-1")
        status: int = HTTPStatus.OK
        try:
            with request_scope():  # the version stays open until the answer is sent
                if declared > self.limit:
                    raise body_too_large(self.limit)
                body = await self._read_body(receive)
                if body is None:  # the client left before sending its request
                    status = CLIENT_CLOSED
                    return
                reply = await v2_infer(self.plane, name, version, body, content_type, header_length)
                headers = [
                    (b"content-type", reply.media_type.encode()),
                    (b"content-length", str(len(reply.body)).encode()),
                    *((k.lower().encode(), v.encode()) for k, v in reply.headers.items()),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": reply.body})
        except ServingError as exc:
            status = exc.status
            await serving_error_response(exc, "POST", scope["path"])(scope, receive, send)
        except Exception:
            status = HTTPStatus.INTERNAL_SERVER_ERROR
            log.exception("POST %s failed", scope["path"])
            await error_response(status, "internal server error")(scope, receive, send)
        finally:
            endpoint = VERSION_ENDPOINT if version is not None else ENDPOINT
            metrics = self.plane.metrics
            metrics.requests.labels(endpoint, "POST", str(status)).inc()
            metrics.request_latency.labels(endpoint).observe(time.perf_counter() - start)

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, refused at the limit or the body timeout while reading; None if the
        client disconnects."""
        chunks: list[bytes] = []
        size = 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            message = await receive_body_message(receive, deadline, self.timeout_s)
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                raise body_too_large(self.limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
