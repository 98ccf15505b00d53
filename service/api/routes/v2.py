"""Open Inference Protocol v2 (KServe v2, Triton): health, metadata, readiness, infer."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.app import VERSION, ServiceState, is_json, service_state
from service.api.codec import decode_infer_request, encode_infer_response, to_pixels
from service.api.schemas import (
    InferenceRequest,
    InferenceResponse,
    ModelMetadata,
    ServerMetadata,
    errors,
    json_body,
)
from service.core.errors import (
    InvalidInput,
    ModelNotReady,
    UnprocessableInput,
    UnsupportedMediaType,
)
from service.engine.repository import ModelState

router = APIRouter(prefix="/v2", tags=["Open Inference Protocol v2"])

HEADER_LENGTH = "inference-header-content-length"
INFER_EXAMPLE = {
    "inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}]
}


@router.get("/health/live", summary="The server process is up")
async def live() -> dict[str, bool]:
    return {"live": True}


@router.get(
    "/health/ready", summary="Loading finished and some model is ready", responses=errors(503)
)
async def ready(request: Request) -> dict[str, bool]:
    repository = service_state(request).repository
    if not repository.ready:
        raise ModelNotReady("no model is ready" if repository.loaded else "still loading models")
    return {"ready": True}


@router.get(
    "", summary="Server metadata", response_model=None, responses={200: {"model": ServerMetadata}}
)
async def server_metadata() -> dict[str, Any]:
    return {
        "name": "cifar-serve",
        "version": VERSION,
        "extensions": ["binary_tensor_data", "model_repository"],
    }


def _metadata(state: ServiceState, name: str, version: str | None) -> dict[str, Any]:
    runtime = state.repository.get(name, version)
    ready = [str(e.version) for e in state.repository.versions(name) if e.state is ModelState.READY]
    return {
        "name": name,
        "versions": ready,
        "platform": "onnxruntime_onnx",
        "inputs": [vars(t) for t in runtime.card.inputs],
        "outputs": [vars(t) for t in runtime.card.outputs],
        "parameters": {
            "execution_providers": runtime.providers,
            "class_names": runtime.card.class_names,
        },
    }


def _model_ready(state: ServiceState, name: str, version: str | None) -> dict[str, Any]:
    state.repository.get(name, version)  # 404 unknown, 503 not ready
    return {"name": name, "ready": True}


async def _infer(request: Request, name: str, version: str | None) -> Response:
    state = service_state(request)
    runtime = state.repository.get(name, version)
    header = request.headers.get(HEADER_LENGTH)
    header_length: int | None = None
    if header is not None:
        if not header.isdigit():
            raise InvalidInput(f"Inference-Header-Content-Length {header!r} is not a number")
        header_length = int(header)
    elif not is_json(request):
        raise UnsupportedMediaType(
            f"expected application/json (or the binary extension's header), got "
            f"{request.headers.get('content-type')!r}"
        )
    infer = decode_infer_request(
        await request.body(), header_length, state.settings.max_images_per_request
    )
    if len(infer.inputs) != 1 or infer.inputs[0].name != runtime.input.name:
        given = [t.name for t in infer.inputs]
        raise UnprocessableInput(
            f"model {name!r} takes one input {runtime.input.name!r}, the request gives {given}"
        )
    pixels = to_pixels(infer.inputs[0], runtime.image_shape)
    requested = [o.name for o in infer.outputs]
    unknown = sorted(set(requested) - set(runtime.output_names))
    if unknown:
        raise UnprocessableInput(
            f"unknown output(s) {unknown}; model {name!r} has {runtime.output_names}"
        )
    outputs = await state.infer(runtime, pixels, requested or None)
    binary = {o.name: o.binary for o in infer.outputs} or dict.fromkeys(
        outputs, infer.binary_output
    )
    body, json_length = encode_infer_response(name, runtime.version, infer.id, outputs, binary)
    if json_length is None:
        return Response(body, media_type="application/json")
    return Response(
        body,
        media_type="application/octet-stream",
        headers={"Inference-Header-Content-Length": str(json_length)},
    )


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
async def model_metadata(request: Request, name: str) -> dict[str, Any]:
    return _metadata(service_state(request), name, None)


@router.get("/models/{name}/versions/{version}", summary="Model metadata of a version", **_META)
async def version_metadata(request: Request, name: str, version: str) -> dict[str, Any]:
    return _metadata(service_state(request), name, version)


@router.get("/models/{name}/ready", summary="The served version is ready", **_READY)
async def model_ready(request: Request, name: str) -> dict[str, Any]:
    return _model_ready(service_state(request), name, None)


@router.get("/models/{name}/versions/{version}/ready", summary="A version is ready", **_READY)
async def version_ready(request: Request, name: str, version: str) -> dict[str, Any]:
    return _model_ready(service_state(request), name, version)


@router.post("/models/{name}/infer", summary="Classify a batch of images (v2 tensors)", **_INFER)
async def infer(request: Request, name: str) -> Response:
    return await _infer(request, name, None)


@router.post(
    "/models/{name}/versions/{version}/infer", summary="Classify with a given version", **_INFER
)
async def version_infer(request: Request, name: str, version: str) -> Response:
    return await _infer(request, name, version)
