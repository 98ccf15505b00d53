"""HTTP in and out, for every route and the fast path: JSON and error responses (the one mapping
of the error tree to HTTP), media types, and reading bodies and multipart forms."""

from __future__ import annotations

import logging
import reprlib
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing, asynccontextmanager
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import Request
from pydantic import BaseModel, ValidationError
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.responses import JSONResponse as StarletteJSONResponse

from service.api.rest.form_delimiters import FormDelimiters
from service.api.rest.json_wire import dumps
from service.core.errors import (
    BodyBudgetFull,
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    Unauthorized,
    UnsupportedMediaType,
)
from service.core.throttled_log import ThrottledLog

log = logging.getLogger(__name__)
# A 5xx a client can cause at will (503s of a full queue, a model's failures): one line per
# error class per interval, with the count of the rest (9,850 503s had written 2.75 MB).
_serving_error_log = ThrottledLog(log)

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
        kind = f"{exc.status} {type(exc).__name__}"
        _serving_error_log.warning("%s %s: %s", method, path, exc.message, key=kind)
    response = error_response(exc.status, exc.message)
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = "Bearer"
    elif isinstance(exc, Overloaded):
        response.headers["Retry-After"] = RETRY_AFTER_S
    if isinstance(exc, PayloadTooLarge | RequestTimeout | BodyBudgetFull):
        response.headers["Connection"] = "close"  # the rest of the body is not worth reading
    return response


def internal_error_response(method: str, path: str, exc: BaseException) -> JSONResponse:
    """An unexpected exception: logged with its traceback, answered as a generic 500."""
    log.error("%s %s failed", method, path, exc_info=exc)
    return error_response(HTTPStatus.INTERNAL_SERVER_ERROR, "internal server error")


def body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the request body is over the limit of {limit} bytes")


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``; no header -> ``""``."""
    return (content_type or "").split(";")[0].strip().lower()


def is_json_type(content_type: str | None) -> bool:
    """JSON, or no content type at all (curl -d without -H)."""
    kind = media_type(content_type)
    return kind in ("", JSON) or kind.endswith("+json")


# A form's Content-Type: parsed by a quadratic walk of its ';' (60 kB of them: 71 ms)
MAX_CONTENT_TYPE_CHARS, MAX_CONTENT_TYPE_PARAMETERS = 1024, 8  # a boundary: at most 70
SMALL_BODY_BYTES = 1 << 20  # JSON bodies of the calls that carry no images (shapes, repository)


async def read_json_body(request: Request, max_bytes: int = SMALL_BODY_BYTES) -> bytes:
    """The body of a JSON endpoint; another content type is a 415, over ``max_bytes`` a 413.
    The default suits bodies small enough to parse on the event loop (about 2 ms a MiB)."""
    content_type = request.headers.get("content-type")
    if not is_json_type(content_type):
        raise UnsupportedMediaType(f"expected application/json, got {content_type!r}")
    body = await request.body()
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"the request body is over this call's limit of {max_bytes} bytes")
    return body


@asynccontextmanager
async def multipart_form(
    request: Request, max_files: int, too_many: str, max_bytes: int, max_fields: int = 100
) -> AsyncIterator[FormData]:
    """The request's multipart form, closed on exit; more than ``max_files`` files is a 413
    saying ``too_many``, a malformed form a 400.

    Uploaded files are kept in memory up to ``max_bytes`` (the body limit, which bounds them
    anyway), never spooled to a temporary file: a container's /tmp is small (deploy/k8s gives it
    64 MiB) and shared by every request.
    """
    content_type = request.headers.get("content-type", "")
    parameters = content_type.count(";")
    if len(content_type) > MAX_CONTENT_TYPE_CHARS or parameters > MAX_CONTENT_TYPE_PARAMETERS:
        raise InvalidInput(
            f"the Content-Type of a form may hold at most {MAX_CONTENT_TYPE_CHARS} characters "
            f"and {MAX_CONTENT_TYPE_PARAMETERS} parameters"
        )
    try:
        async with aclosing(_checked(request, content_type)) as stream:
            parser = MultiPartParser(
                request.headers, stream, max_files=max_files, max_fields=max_fields
            )
            parser.spool_max_size = max_bytes
            form = await parser.parse()
    except MultiPartException as exc:
        if "Too many files" in exc.message:
            raise PayloadTooLarge(too_many) from None
        raise InvalidInput(f"malformed multipart form: {exc.message}") from None
    try:
        yield form
    finally:
        await form.close()


async def _checked(request: Request, content_type: str) -> AsyncGenerator[bytes]:
    """The body's chunks, each checked by ``FormDelimiters`` before the parser walks it."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    delimiters = FormDelimiters(boundary) if boundary is not None else None  # b"" is one too
    async with aclosing(request.stream()) as stream:
        async for chunk in stream:
            if delimiters is not None:
                delimiters.check(chunk)
            yield chunk


Body = TypeVar("Body", bound=BaseModel)

# What a pydantic error type means, in the words of the rest of the API's messages.
MUST_BE = {
    "list_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "bool_type": "must be true or false",
    "int_type": "must be an integer",
    "float_type": "must be a number",
    "string_type": "must be a string",
}


SHOWN_PROBLEMS = 8  # of a body's validation errors, named in its 4xx


def validated_body(model: type[Body], data: Any, error: type[ServingError] = InvalidInput) -> Body:
    """A parsed JSON body as ``model``, strictly typed (no "3" for 3, no 1 for true); a
    mismatch is ``error`` naming each field and what it must be."""
    if not isinstance(data, Mapping):
        raise error("the body must be a JSON object")
    try:
        return model.model_validate(data, strict=True)
    except ValidationError as exc:
        raise error(_validation_message(model, exc)) from None


def _validation_message(model: type[BaseModel], exc: ValidationError) -> str:
    """Each problem named, the first ``SHOWN_PROBLEMS`` of them: a body of a million wrong
    items must not buy a million-part answer."""
    parts = []
    count = exc.error_count()
    for problem in exc.errors(include_url=False)[:SHOWN_PROBLEMS]:
        # union members' tags ("list[any]") are not places in the body: left out
        where = ".".join(
            str(p) for p in problem["loc"] if isinstance(p, int) or str(p).isidentifier()
        )
        kind = problem["type"]
        if kind == "missing":
            field = model.model_fields.get(str(problem["loc"][0]))
            expected = getattr(field.annotation, "__name__", "") if field else ""
            wanted = {"list": "a list", "dict": "an object"}.get(expected, "given")
            parts.append(f"'{where}' must be {wanted} (missing)")
            continue
        phrase = MUST_BE.get(kind) or problem["msg"][:1].lower() + problem["msg"][1:]
        shown = reprlib.repr(problem.get("input"))  # bounded: a list's repr may be megabytes
        parts.append(f"'{where}' {phrase}, got {shown[:80]}")
    if count > SHOWN_PROBLEMS:
        parts.append(f"and {count - SHOWN_PROBLEMS} more")
    return "; ".join(parts)
