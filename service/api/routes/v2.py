"""Open Inference Protocol v2 (KServe v2, Triton): health, metadata, readiness, infer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api import dataplane
from service.api.infer import HEADER_LENGTH, v2_infer
from service.api.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
    errors,
    json_body,
)
from service.api.state import State

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
async def ready(state: State) -> dict[str, bool]:
    dataplane.server_ready(state)
    return {"ready": True}


EXTENSIONS = ["binary_tensor_data", "model_repository"]


@router.get(
    "", summary="Server metadata", response_model=None, responses={200: {"model": ServerMetadata}}
)
async def server_metadata() -> dict[str, Any]:
    return vars(dataplane.server_metadata(EXTENSIONS))


def _metadata(state: State, name: str, version: str | None) -> dict[str, Any]:
    meta = dataplane.model_metadata(state, name, version)
    return {
        "name": meta.name,
        "versions": meta.versions,
        "platform": meta.platform,
        "inputs": [vars(t) for t in meta.inputs],
        "outputs": [vars(t) for t in meta.outputs],
        "parameters": {
            "execution_providers": meta.execution_providers,
            "class_names": meta.class_names,
        },
    }


def _model_ready(state: State, name: str, version: str | None) -> dict[str, Any]:
    dataplane.model_runtime(state, name, version)  # 404 unknown, 503 not ready
    return {"name": name, "ready": True}


async def _infer(request: Request, state: State, name: str, version: str | None) -> Response:
    """Reached when the fast path is off (tests build apps either way); same answers."""
    reply = await v2_infer(
        state,
        name,
        version,
        await request.body(),
        request.headers.get("content-type"),
        request.headers.get(HEADER_LENGTH),
    )
    return Response(reply.body, media_type=reply.media_type, headers=reply.headers)


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
async def model_metadata(state: State, name: str) -> dict[str, Any]:
    return _metadata(state, name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata of a version", **_META)
async def version_metadata(state: State, name: str, version: str) -> dict[str, Any]:
    return _metadata(state, name, version)


@router.get("/models/{name}/ready", summary="The served version is ready", **_READY)
async def model_ready(state: State, name: str) -> dict[str, Any]:
    return _model_ready(state, name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="A version is ready", **_READY)
async def version_ready(state: State, name: str, version: str) -> dict[str, Any]:
    return _model_ready(state, name, version)


@router.post("/models/{name}/infer", summary="Classify a batch of images (v2 tensors)", **_INFER)
async def infer(request: Request, state: State, name: str) -> Response:
    return await _infer(request, state, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer", summary="Classify with a given version", **_INFER
)
async def version_infer(request: Request, state: State, name: str, version: str) -> Response:
    return await _infer(request, state, name, version)
