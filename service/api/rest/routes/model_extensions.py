"""Triton's statistics and model configuration extensions over REST: ``GET
/v2/models[/{name}[/versions/{v}]]/stats`` and ``GET /v2/models/{name}[/versions/{v}]/config``.
Included ahead of ``v2`` so ``/v2/models/stats`` is not read as a model named "stats"."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service.api.rest.dependencies import Plane
from service.api.rest.extension_json import model_config_json, statistics_json
from service.api.rest.schemas import errors

router = APIRouter(prefix="/v2/models", tags=["Statistics and model configuration (Triton)"])

_STATS: dict[str, Any] = {"response_model": None, "responses": errors(404, 503)}


@router.get("/stats", summary="Statistics of every loaded version of every model", **_STATS)
async def all_statistics(plane: Plane) -> dict[str, Any]:
    return statistics_json(await plane.statistics(None))


@router.get("/{name}/stats", summary="Statistics of every loaded version of a model", **_STATS)
async def model_statistics(plane: Plane, name: str) -> dict[str, Any]:
    return statistics_json(await plane.statistics(name))


@router.get("/{name}/versions/{version}/stats", summary="Statistics of a version", **_STATS)
async def version_statistics(plane: Plane, name: str, version: str) -> dict[str, Any]:
    return statistics_json(await plane.statistics(name, version))


@router.get("/{name}/config", summary="Configuration of the served version", **_STATS)
async def model_config(plane: Plane, name: str) -> dict[str, Any]:
    return model_config_json(plane.model_config(name))


@router.get("/{name}/versions/{version}/config", summary="Configuration of a version", **_STATS)
async def version_config(plane: Plane, name: str, version: str) -> dict[str, Any]:
    return model_config_json(plane.model_config(name, version))
