"""Triton's model repository extension: ``POST /v2/repository/index``, ``.../models/{name}/load``
and ``.../unload``.

They show and change what the server serves, so they take ``Authorization: Bearer <ADMIN_TOKEN>``
and refuse browsers' cross-site requests; without a token configured they are refused, bar
``ADMIN_LOOPBACK``'s direct local clients (``admin``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPBearer

from service.api.admin import check_admin, check_same_site
from service.api.client_address import caller
from service.api.config_override import read_config_override
from service.api.rest.dependencies import Plane
from service.api.rest.http_io import read_json_body, validated_body
from service.api.rest.json_wire import loads
from service.api.rest.schemas import RepositoryIndexEntry, RepositoryRequest, errors, json_body

MAX_PATH_CHARS = 256  # of a path in an admin call's log line (the rest is counted)

# Documents the bearer scheme in OpenAPI (so clients and fuzzers know of it); ``check_admin``
# reads the header itself, as gRPC's metadata is read.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description=(
        "ADMIN_TOKEN (or the contents of ADMIN_TOKEN_FILE); without one configured the repository "
        "API is refused, except with ADMIN_LOOPBACK for direct clients at 127.0.0.1 or ::1."
    ),
)


def refuse_cross_site(request: Request) -> None:
    """403 for a browser's cross-site request (``check_same_site``): a page on any site can
    make a browser POST to a local server."""
    headers = request.headers
    check_same_site(headers.get("sec-fetch-site"), headers.get("origin"), headers.get("host"))


async def require_admin(
    request: Request, plane: Plane, _: Annotated[Any, Security(BEARER)] = None
) -> None:
    """The REST routes' dependency: not cross-site, then ``check_admin`` (async: no thread hop)."""
    refuse_cross_site(request)
    headers = request.headers
    settings = plane.settings
    peer = request.client.host if request.client else None
    who = caller(peer, headers.items(), settings.trusted_proxies)
    path, method = request.url.path, request.method
    if len(path) > MAX_PATH_CHARS:
        path = f"{path[:MAX_PATH_CHARS]}... ({len(path)} characters)"
    route = getattr(request.scope.get("route"), "path", path)
    # Refusals are throttled by the route's template: each name in a path is no new kind of line
    check_admin(
        settings, who, headers.get("authorization", ""), f"{method} {path}", headers.get("host"),
        f"{method} {route}",
    )  # fmt: skip


router = APIRouter(
    prefix="/v2/repository",
    tags=["Model repository (Triton extension)"],
    dependencies=[Depends(require_admin)],
)


async def _request_body(request: Request) -> RepositoryRequest:
    """The optional JSON body: nothing, or an object of ``RepositoryRequest``'s fields."""
    body = await read_json_body(request)
    return validated_body(RepositoryRequest, loads(body) if body.strip() else {})


BODY = json_body(RepositoryRequest, {"ready": True}, required=False)


@router.post(
    "/index",
    summary="Every model version on disk: READY, UNAVAILABLE (with the reason) or UNLOADED",
    response_model=list[RepositoryIndexEntry],
    responses=errors(400, 401, 403),
    openapi_extra=BODY,
)
async def index(request: Request, plane: Plane) -> list[dict[str, Any]]:
    body = await _request_body(request)
    return [vars(entry) for entry in plane.repository_index(body.ready)]


@router.post(
    "/models/{name}/load",
    summary="Load (or reload) a model from disk under its version policy; failed versions retried",
    responses=errors(400, 401, 403, 404),
    openapi_extra=BODY,
)
async def load(request: Request, plane: Plane, name: str) -> dict[str, Any]:
    body = await _request_body(request)
    override = None
    if "config" in body.parameters:
        override = await read_config_override(
            plane.work, name, body.parameters["config"], lambda: plane.model_config(name)
        )
    await plane.load_model(name, body.parameters, override)
    return {}


@router.post(
    "/models/{name}/unload",
    summary="Stop serving every version of a model (in-flight requests finish) until a load",
    responses=errors(400, 401, 403, 404),
    openapi_extra=BODY,
)
async def unload(request: Request, plane: Plane, name: str) -> dict[str, Any]:
    await _request_body(request)  # unload_dependents: there are no ensembles to follow
    await plane.unload_model(name)
    return {}
