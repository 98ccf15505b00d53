"""Triton's model repository extension: ``POST /v2/repository/index``, ``.../models/{name}/load``
and ``.../unload``.

They show and change what the server serves, so they take ``Authorization: Bearer <ADMIN_TOKEN>``
when that setting is set, and answer loopback clients only when it is not (``admin``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import APIRouter, Depends, Request

from service.api import dataplane
from service.api.admin import require_admin
from service.api.codec import loads
from service.api.http_io import read_json_body
from service.api.schemas import RepositoryIndexEntry, errors
from service.api.state import State
from service.core.errors import InvalidInput

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
async def index(request: Request, state: State) -> list[dict[str, Any]]:
    body = await _request_object(request)
    ready = body.get("ready", False)
    if not isinstance(ready, bool):
        raise InvalidInput("'ready' must be true or false")
    return dataplane.repository_index(state, ready)


@router.post(
    "/models/{name}/load",
    summary="Load (or reload) a model from disk under its version policy; failed versions retried",
    responses=errors(400, 401, 403, 404),
)
async def load(request: Request, state: State, name: str) -> dict[str, Any]:
    parameters = (await _request_object(request)).get("parameters", {})
    await dataplane.load_model(state, name, parameters)
    return {}


@router.post(
    "/models/{name}/unload",
    summary="Stop serving every version of a model (in-flight requests finish) until a load",
    responses=errors(400, 401, 403, 404),
)
async def unload(request: Request, state: State, name: str) -> dict[str, Any]:
    await _request_object(request)  # unload_dependents: there are no ensembles to follow
    await dataplane.unload_model(state, name)
    return {}
