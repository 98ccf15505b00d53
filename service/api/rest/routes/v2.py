"""Open Inference Protocol v2 (KServe v2, Triton): health, metadata, readiness, infer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.responses import Response

from service.api.rest.codec import model_metadata_json
from service.api.rest.dependencies import Plane
from service.api.rest.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
    errors,
    json_body,
)
from service.dataplane.dataplane import DataPlane

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

INFER_EXAMPLE = {
    "inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}]
}


@router.get("/health/live", summary="The server process is up")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready", summary="Loading finished and some model is ready", responses=errors(503)
)
async def ready(plane: Plane) -> dict[str, bool]:
    plane.check_ready()
    return {"ready": True}


EXTENSIONS = [
    "classification",
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
    "system_shared_memory",
    "logging",
    "trace",
]


@router.get(
    "", summary="Server metadata", response_model=None, responses={200: {"model": ServerMetadata}}
)
async def server_metadata() -> dict[str, Any]:
    return vars(DataPlane.server_metadata(EXTENSIONS))


def _metadata(plane: Plane, name: str, version: str | None) -> dict[str, Any]:
    return model_metadata_json(plane.model_metadata(name, version))


def _model_ready(plane: Plane, name: str, version: str | None) -> dict[str, Any]:
    plane.model(name, version)  # 404 unknown, 503 not ready
    return {"name": name, "ready": True}


_META: dict[str, Any] = {
    "response_model": None,
    "responses": {200: {"model": ModelMetadata}, **errors(404, 503)},
}
_READY: dict[str, Any] = {"response_model": None, "responses": errors(404, 503)}
_INFER: dict[str, Any] = {
    "response_model": None,
    "responses": {200: {"model": InferenceResponse}, **errors(400, 404, 413, 415, 422, 503)},
    "openapi_extra": json_body(InferenceRequest, INFER_EXAMPLE),
}


@router.get("/models/{name}", summary="Model metadata (the served version)", **_META)
async def model_metadata(plane: Plane, name: str) -> dict[str, Any]:
    return _metadata(plane, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata of a version", **_META)
async def version_metadata(plane: Plane, name: str, version: str) -> dict[str, Any]:
    return _metadata(plane, name, version)


@router.get("/models/{name}/ready", summary="The served version is ready", **_READY)
async def model_ready(plane: Plane, name: str) -> dict[str, Any]:
    return _model_ready(plane, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="A version is ready", **_READY)
async def version_ready(plane: Plane, name: str, version: str) -> dict[str, Any]:
    return _model_ready(plane, name, version)


# v2 infer is answered by ``fast_path.FastInfer`` before routing (its one implementation); these
# routes document it in OpenAPI and give other methods on its paths their 405.
NOT_ROUTED = "v2 infer is answered by the fast path, ahead of the router"


@router.post("/models/{name}/infer", summary="Classify a batch of images (v2 tensors)", **_INFER)
async def infer(name: str) -> Response:
    raise RuntimeError(NOT_ROUTED)


@router.post(
    "/models/{name}/versions/{version}/infer", summary="Classify with a given version", **_INFER
)
async def version_infer(name: str, version: str) -> Response:
    raise RuntimeError(NOT_ROUTED)
