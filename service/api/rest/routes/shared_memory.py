"""Triton's system shared memory extension: ``GET /v2/systemsharedmemory[/region/{name}]/status``,
``POST /v2/systemsharedmemory/region/{name}/register`` and ``POST .../unregister``.

Registering lets a client have the server read and write a file of its own, and a region's name
is all an infer request needs to use it, so all three calls (status too: it lists the names) take
the repository API's rule: the admin token, or ADMIN_LOOPBACK's direct local clients (``admin``).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from service.api.rest.dependencies import Plane
from service.api.rest.http_io import read_json_body, validated_body
from service.api.rest.json_wire import loads
from service.api.rest.routes.model_repository import require_admin
from service.api.rest.schemas import errors, json_body


class RegisterRequest(BaseModel):
    """The body of a registration (Triton's)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(description="The POSIX shared-memory object's name: '/name', in /dev/shm.")
    offset: int = Field(0, ge=0, description="Where the region starts in the object, in bytes.")
    byte_size: int = Field(ge=1, description="The region's size in bytes, inside the object.")


class RegionStatus(BaseModel):
    name: str
    key: str
    offset: int
    byte_size: int


router = APIRouter(
    prefix="/v2/systemsharedmemory",
    tags=["System shared memory (Triton extension)"],
    dependencies=[Depends(require_admin)],
)

STATUS = errors(401, 403, 404)


@router.get(
    "/status",
    summary="Every registered region",
    response_model=list[RegionStatus],
    responses=STATUS,
)
async def status(plane: Plane) -> list[dict[str, Any]]:
    return [vars(region) for region in plane.shared_memory.status()]


@router.get(
    "/region/{name}/status",
    summary="One registered region",
    response_model=list[RegionStatus],
    responses=STATUS,
)
async def region_status(plane: Plane, name: str) -> list[dict[str, Any]]:
    return [vars(region) for region in plane.shared_memory.status(name)]


@router.post(
    "/region/{name}/register",
    summary="Register bytes of a shared-memory object as a region infer requests can name",
    responses=errors(400, 401, 403),
    openapi_extra=json_body(RegisterRequest, {"key": "/input0", "offset": 0, "byte_size": 3072}),
)
async def register(request: Request, plane: Plane, name: str) -> dict[str, Any]:
    body = validated_body(RegisterRequest, loads(await read_json_body(request)))
    await plane.register_region(name, body.key, body.offset, body.byte_size)
    return {}


@router.post("/unregister", summary="Unregister every region", responses=errors(401, 403))
async def unregister_all(plane: Plane) -> dict[str, Any]:
    await plane.unregister_region()
    return {}


@router.post(
    "/region/{name}/unregister",
    summary="Unregister a region (an unknown name is no error, as Triton)",
    responses=errors(401, 403),
)
async def unregister(plane: Plane, name: str) -> dict[str, Any]:
    await plane.unregister_region(name)
    return {}
