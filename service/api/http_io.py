"""HTTP in and out, for every route and the fast path: JSON and error responses (the one mapping
of the error tree to HTTP), media types, and reading bodies and multipart forms."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Request
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.responses import JSONResponse as StarletteJSONResponse

from service.api.codec import dumps
from service.core.errors import (
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    Unauthorized,
    UnsupportedMediaType,
)

log = logging.getLogger(__name__)

RETRY_AFTER_S = "1"  # what an overloaded server tells clients to wait (seconds)
JSON = "application/json"
MULTIPART = "multipart/form-data"


class JSONResponse(StarletteJSONResponse):
    """orjson-encoded JSON (numpy arrays included). A Starlette ``JSONResponse`` so the OpenAPI
    document gives routes their JSON schemas (another class would be documented as a string)."""

    media_type = JSON

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


def body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is over the limit of {limit} bytes")


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``; no header -> ``""``."""
    return (content_type or "").split(";")[0].strip().lower()


def is_json_type(content_type: str | None) -> bool:
    """JSON, or no content type at all (curl -d without -H)."""
    kind = media_type(content_type)
    return kind in ("", JSON) or kind.endswith("+json")


async def read_json_body(request: Request) -> bytes:
    """The body of a JSON endpoint; another content type is a 415."""
    content_type = request.headers.get("content-type")
    if not is_json_type(content_type):
        raise UnsupportedMediaType(f"expected application/json, got {content_type!r}")
    return await request.body()


@asynccontextmanager
async def multipart_form(
    request: Request, max_files: int, too_many: str, max_fields: int = 100
) -> AsyncIterator[FormData]:
    """The request's multipart form, closed on exit; more than ``max_files`` files is a 413
    saying ``too_many``, a malformed form a 400."""
    try:
        form = await request.form(max_files=max_files, max_fields=max_fields)
    except (MultiPartException, HTTPException) as exc:  # Starlette wraps the first in the second
        message = exc.message if isinstance(exc, MultiPartException) else str(exc.detail)
        if "Too many files" in message:
            raise PayloadTooLarge(too_many) from None
        raise InvalidInput(f"malformed multipart form: {message}") from None
    try:
        yield form
    finally:
        await form.close()
