"""Triton's logging extension over REST: ``GET /v2/logging`` (open, as Triton's) and
``POST /v2/logging`` (the repository API's rule: admin token or ADMIN_LOOPBACK's local clients).
One route for both methods, so a 405 names them both in ``Allow``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.rest.dependencies import Plane
from service.api.rest.http_io import read_json_body
from service.api.rest.json_wire import loads
from service.api.rest.routes.model_repository import require_admin
from service.api.rest.schemas import errors
from service.core.errors import InvalidInput

router = APIRouter(prefix="/v2/logging", tags=["Logging (Triton extension)"])


async def settings_body(request: Request, plane: Plane) -> dict[str, Any] | None:
    """None for a GET; for a POST, once the admin rule admits it, its JSON object."""
    if request.method != "POST":
        return None
    await require_admin(request, plane)
    body = loads(await read_json_body(request))  # small: parsed on the loop
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object of settings")
    return body


@router.api_route(
    "",
    methods=["GET", "POST"],
    summary="The log settings in force; POST changes log_info, log_warning, log_error and "
    "log_verbose_level at run time (admin token)",
    responses=errors(400, 401, 403),
)
async def log_settings(request: Request, plane: Plane) -> dict[str, Any]:
    changes = await settings_body(request, plane)
    settings = plane.log_settings
    return settings.get() if changes is None else settings.update(changes)
