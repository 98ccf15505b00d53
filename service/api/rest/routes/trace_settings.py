"""Triton's trace extension over REST: ``GET`` (open) and ``POST`` (the repository API's rule)
of ``/v2/trace/setting`` and ``/v2/models/{name}/trace/setting``; tracing is OpenTelemetry's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.rest.dependencies import Plane
from service.api.rest.routes.log_settings import settings_body
from service.api.rest.schemas import errors

router = APIRouter(prefix="/v2", tags=["Trace (Triton extension)"])


@router.api_route(
    "/trace/setting",
    methods=["GET", "POST"],
    summary="The global trace settings; POST changes trace_level, trace_rate, trace_count "
    "(admin token)",
    responses=errors(400, 401, 403),
)
async def trace_settings(request: Request, plane: Plane) -> dict[str, Any]:
    changes = await settings_body(request, plane)
    settings = plane.trace_settings
    return settings.get() if changes is None else settings.update(changes)


@router.api_route(
    "/models/{name}/trace/setting",
    methods=["GET", "POST"],
    summary="A model's trace settings (its own, else the global ones); POST changes them, "
    "null: back to the global value (admin token)",
    responses=errors(400, 401, 403, 404),
)
async def model_trace_settings(request: Request, plane: Plane, name: str) -> dict[str, Any]:
    plane.version_status(name)  # 404 for a model the repository does not have
    changes = await settings_body(request, plane)
    settings = plane.trace_settings
    return settings.get(name) if changes is None else settings.update(changes, name)
