"""Triton's trace extension over REST: ``GET`` (open) and ``POST`` (the repository API's rule)
of ``/v2/trace/setting`` and ``/v2/models/{name}/trace/setting``; tracing is OpenTelemetry's."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from service.api.rest.dependencies import Plane
from service.api.rest.routes.log_settings import ADMIN, refuse_other_methods, settings_body
from service.api.rest.schemas import errors

router = APIRouter(prefix="/v2", tags=["Trace (Triton extension)"])


@router.get("/trace/setting", summary="The global trace settings")
async def get_trace_settings(plane: Plane) -> dict[str, Any]:
    return plane.trace_settings.get()


@router.post(
    "/trace/setting",
    summary="Change the global trace settings (trace_level, trace_rate, trace_count)",
    responses=errors(400, 401, 403),
    dependencies=ADMIN,
)
async def update_trace_settings(request: Request, plane: Plane) -> dict[str, Any]:
    return plane.trace_settings.update(await settings_body(request))


@router.get(
    "/models/{name}/trace/setting",
    summary="A model's trace settings (its own, else the global ones)",
    responses=errors(404),
)
async def get_model_trace_settings(plane: Plane, name: str) -> dict[str, Any]:
    plane.version_status(name)  # 404 for a model the repository does not have
    return plane.trace_settings.get(name)


@router.post(
    "/models/{name}/trace/setting",
    summary="Change a model's trace settings (null: back to the global value)",
    responses=errors(400, 401, 403, 404),
    dependencies=ADMIN,
)
async def update_model_trace_settings(request: Request, plane: Plane, name: str) -> dict[str, Any]:
    plane.version_status(name)
    return plane.trace_settings.update(await settings_body(request), name)


refuse_other_methods(router, "/trace/setting")
refuse_other_methods(router, "/models/{name}/trace/setting")
