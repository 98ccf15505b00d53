"""Triton's model repository extension: ``POST /v2/repository/index``, ``.../models/{name}/load``
and ``.../unload``.

They show and change what the server serves, so they take ``Authorization: Bearer <ADMIN_TOKEN>``
when that setting is set, and answer loopback clients only when it is not.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Security
from fastapi.security import HTTPBearer
from pydantic import SecretStr

from service.api.app import read_json_body, service_state
from service.api.codec import loads
from service.api.schemas import RepositoryIndexEntry, errors
from service.core.errors import Forbidden, InvalidInput, Unauthorized
from service.engine.repository import ModelRepository, ModelState


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def check_admin(token: SecretStr | None, host: str | None, authorization: str) -> None:
    """The repository API's rule, for REST and gRPC alike: 401 without the bearer token, 403 with
    a wrong one or, tokenless, from off the host (``host``: the client's IP address)."""
    if token is None:
        if not is_loopback(host):
            raise Forbidden(
                "the repository API answers loopback clients only unless ADMIN_TOKEN is set"
            )
        return
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        raise Unauthorized("the repository API needs 'Authorization: Bearer <ADMIN_TOKEN>'")
    if not hmac.compare_digest(given.strip().encode(), token.get_secret_value().encode()):
        raise Forbidden("wrong bearer token for the repository API")


# Documents the bearer scheme in OpenAPI (so clients and fuzzers know of it); ``check_admin``
# reads the header itself, as gRPC's metadata is read.
BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="AdminToken",
    description="ADMIN_TOKEN, when set; without it the repository API answers loopback only.",
)


def require_admin(request: Request, _: Annotated[Any, Security(BEARER)] = None) -> None:
    check_admin(
        service_state(request).settings.admin_token,
        request.client.host if request.client else None,
        request.headers.get("authorization", ""),
    )


def index_rows(repository: ModelRepository, ready: bool) -> list[dict[str, Any]]:
    """The repository index, or only its READY rows."""
    rows = repository.index()
    return [r for r in rows if r["state"] == ModelState.READY.value] if ready else rows


def check_load_parameters(names: Iterable[str]) -> None:
    """Load's ``config`` and ``file:`` overrides are refused: versions come from the repository."""
    overrides = sorted(k for k in names if k == "config" or str(k).startswith("file:"))
    if overrides:
        raise InvalidInput(
            f"parameters {overrides} are not supported: publish the version into the repository"
        )


router = APIRouter(
    prefix="/v2/repository",
    tags=["Model repository (Triton extension)"],
    dependencies=[Depends(require_admin)],
)


async def _request_object(request: Request) -> Mapping[str, Any]:
    """The optional JSON body: nothing, or an object."""
    body = await read_json_body(request)
    if not body.strip():
        return {}
    data = loads(body)
    if not isinstance(data, Mapping):
        raise InvalidInput("the body must be a JSON object")
    parameters = data.get("parameters", {})
    if not isinstance(parameters, Mapping):
        raise InvalidInput("'parameters' must be an object")
    return data


@router.post(
    "/index",
    summary="Every model version on disk: READY, UNAVAILABLE (with the reason) or UNLOADED",
    response_model=list[RepositoryIndexEntry],
    responses=errors(400, 401, 403),
)
async def index(request: Request) -> list[dict[str, Any]]:
    body = await _request_object(request)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("'ready' must be true or false")
    return index_rows(service_state(request).repository, ready)


@router.post(
    "/models/{name}/load",
    summary="Load (or reload) a model from disk under its version policy; failed versions retried",
    responses=errors(400, 401, 403, 404),
)
async def load(request: Request, name: str) -> dict[str, Any]:
    parameters = (await _request_object(request)).get("parameters", {})
    check_load_parameters(parameters)
    await asyncio.to_thread(service_state(request).repository.load_model, name)
    return {}


@router.post(
    "/models/{name}/unload",
    summary="Stop serving every version of a model (in-flight requests finish) until a load",
    responses=errors(400, 401, 403, 404),
)
async def unload(request: Request, name: str) -> dict[str, Any]:
    await _request_object(request)  # unload_dependents: there are no ensembles to follow
    await asyncio.to_thread(service_state(request).repository.unload_model, name)
    return {}
