"""Triton's logging extension over REST: ``GET /v2/logging`` (open, as Triton's) and
``POST /v2/logging`` (the repository API's rule: admin token or ADMIN_LOOPBACK's local clients)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.exceptions import HTTPException

from service.api.rest.dependencies import Plane
from service.api.rest.http_io import read_json_body
from service.api.rest.json_wire import loads
from service.api.rest.routes.model_repository import require_admin
from service.api.rest.schemas import errors
from service.core.errors import InvalidInput

router = APIRouter(prefix="/v2/logging", tags=["Logging (Triton extension)"])
ADMIN = [Depends(require_admin)]
OTHER_METHODS = ["DELETE", "PATCH", "PUT", "OPTIONS", "TRACE"]


def refuse_other_methods(router: APIRouter, path: str) -> None:
    """A 405 naming both GET and POST in ``Allow`` for ``path``'s other methods (a GET route and
    a POST route apart would each answer with their own method only)."""

    async def not_allowed() -> None:
        raise HTTPException(405, "Method Not Allowed", headers={"Allow": "GET, POST"})

    router.add_api_route(path, not_allowed, methods=OTHER_METHODS, include_in_schema=False)


async def settings_body(request: Request) -> dict[str, Any]:
    """A settings call's JSON object (small: parsed on the loop)."""
    body = loads(await read_json_body(request))
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object of settings")
    return body


@router.get("", summary="The log settings in force")
async def get_log_settings(plane: Plane) -> dict[str, Any]:
    return plane.log_settings.get()


@router.post(
    "",
    summary="Change log settings at run time (log_info, log_warning, log_error, log_verbose_level)",
    responses=errors(400, 401, 403),
    dependencies=ADMIN,
)
async def update_log_settings(request: Request, plane: Plane) -> dict[str, Any]:
    return plane.log_settings.update(await settings_body(request))


refuse_other_methods(router, "")
