"""Plain REST for people and scripts: ``:predict`` (JSON instances), ``:classify`` (image files),
the model listing and the model card."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Query, Request
from starlette.datastructures import UploadFile
from starlette.responses import Response

from service.api.images import decode_image_files, image_limits
from service.api.predictions import answers, top_k
from service.api.rest.dependencies import Plane
from service.api.rest.http_io import (
    JSON,
    MULTIPART,
    JSONResponse,
    media_type,
    multipart_form,
    read_json_body,
)
from service.api.rest.json_wire import dumps
from service.api.rest.predict import NESTED_JSON_COST, decode_predict_body
from service.api.rest.predict_tensors import decode_predict_tensors_body, encoded_answer
from service.api.rest.schemas import (
    ClassifyResponse,
    PredictRequest,
    PredictResponse,
    errors,
    json_body,
)
from service.core.card import TENSOR
from service.core.errors import InvalidInput, ModelNotReady, UnsupportedMediaType
from service.dataplane.dataplane import DataPlane
from service.dataplane.kinds import require_image
from service.dataplane.types import InferRequest, VersionStatus
from service.engine.runtime import ModelRuntime

router = APIRouter(prefix="/v1", tags=["REST v1"])

TopK = Annotated[
    int | None, Query(ge=1, le=1000, description="Classes per image (default: DEFAULT_TOP_K).")
]
PREDICT_EXAMPLE = {"instances": [{"b64": "<base64 PNG or JPEG>"}], "top_k": 3}


# Classes named in an answer past which it is built and encoded on the work pool: 1,024 rows of a
# 1,000-class model at top_k=1000 are a million objects (the lecture's 10 classes make 10,240).
INLINE_CLASSES = 4096


async def _predictions(
    plane: DataPlane,
    runtime: ModelRuntime,
    pixels: np.ndarray,
    k: int,
    abstain_below: float | None = None,
) -> Response:
    """The top ``k`` classes of each image, with each image's answer where ``abstain_below``
    is given (``:classify``), as an encoded JSON answer."""
    outputs = await plane.predict(runtime, pixels, ["probabilities"])
    probabilities = outputs["probabilities"]
    light = len(probabilities) * min(k, probabilities.shape[-1]) <= INLINE_CLASSES
    version, names = str(runtime.version), runtime.card.class_names
    job = _encoded_predictions, runtime.name, version, probabilities, names, k, abstain_below
    return Response(await plane.work.run_here_if_light(light, *job), media_type=JSON)


def _encoded_predictions(
    name: str,
    version: str,
    probabilities: np.ndarray,
    class_names: Sequence[str],
    k: int,
    abstain_below: float | None,
) -> bytes:
    predictions = top_k(probabilities, class_names, k)
    answer: dict[str, Any] = {
        "model_name": name, "model_version": version, "predictions": predictions,
    }  # fmt: skip
    if abstain_below is not None:
        answer["answers"] = answers(predictions, abstain_below)
        answer["abstain_below"] = abstain_below
    return dumps(answer)


@router.post(
    "/models/{name}:predict",
    summary="Classify JSON instances: nested pixel arrays or base64 images",
    response_model=None,
    responses={200: {"model": PredictResponse}, **errors(400, 404, 413, 415, 422, 503)},
    openapi_extra=json_body(PredictRequest, PREDICT_EXAMPLE),
)
async def predict(
    request: Request, plane: Plane, name: str, top_k: TopK = None
) -> dict[str, Any] | Response:
    runtime = plane.model(name)
    if runtime.kind == TENSOR:
        if top_k is not None:
            require_image(runtime, "top_k")
        return await _predict_tensors(request, plane, runtime)
    settings = plane.settings
    raw = await read_json_body(request, settings.max_request_bytes)
    # A small body is decoded here (its images too, unless they decode to many pixels), a
    # larger one on the work pool, the largest in its child process.
    light = len(raw) <= settings.inline_decode_bytes // NESTED_JSON_COST
    pixels, body_k = await plane.work.run_decoding(
        len(raw),
        light,
        decode_predict_body,
        raw,
        runtime.image_shape,
        runtime.input.name,
        runtime.card.signature_name,
        image_limits(settings),
        settings.max_images_per_request,
        not light,  # values counted in a body too large for the loop
    )
    return await _predictions(plane, runtime, pixels, top_k or body_k or settings.default_top_k)


async def _predict_tensors(request: Request, plane: DataPlane, runtime: ModelRuntime) -> Response:
    """``:predict`` for a tensor model: its inputs by name in, its outputs by name out, in TF
    Serving's form for a multi-input signature (``predict_tensors``)."""
    settings = plane.settings
    raw = await read_json_body(request, settings.max_request_bytes)
    card = runtime.card
    light = len(raw) <= settings.inline_decode_bytes // NESTED_JSON_COST
    tensors, rows = await plane.work.run_decoding(
        len(raw),
        light,
        decode_predict_tensors_body,
        raw,
        card.inputs,
        runtime.batched,
        card.signature_name,
        settings.max_images_per_request,
    )
    response = await plane.infer(runtime, InferRequest(None, tensors))
    # A large answer is written on the work pool, a slice at a time (``dumps_in_slices``).
    light = sum(a.nbytes for a in response.outputs.values()) <= settings.inline_decode_bytes
    version = str(runtime.version)
    job = encoded_answer, runtime.name, version, response.outputs, rows, not light
    return Response(await plane.work.run_here_if_light(light, *job), media_type=JSON)


@router.post(
    "/models/{name}:classify",
    summary="Classify uploaded image files (multipart/form-data, any field name)",
    response_model=None,
    responses={200: {"model": ClassifyResponse}, **errors(400, 404, 413, 415, 422, 503)},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {
                                "type": "array",
                                "items": {"type": "string", "format": "binary"},
                            }
                        },
                        "required": ["file"],
                    }
                }
            },
        }
    },
)
async def classify(request: Request, plane: Plane, name: str, top_k: TopK = None) -> Response:
    runtime = require_image(plane.model(name), ":classify")
    kind = media_type(request.headers.get("content-type"))
    if kind != MULTIPART:
        raise UnsupportedMediaType(f"expected multipart/form-data, got {kind or 'none'!r}")
    limit = plane.settings.max_images_per_request
    too_many = f"more than the limit of {limit} images"
    max_bytes = plane.settings.max_request_bytes
    async with multipart_form(request, limit, too_many, max_bytes) as form:
        uploads = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        if not uploads:
            raise InvalidInput("no image files in the form (send -F file=@image.png)")
        files = [
            (await upload.read(), f"image {i} ({field}={upload.filename or 'unnamed'})")
            for i, (field, upload) in enumerate(uploads)
        ]
    h, w, _ = runtime.image_shape
    rows = await decode_image_files(plane.work, files, (h, w), plane.settings)
    pixels = np.stack(rows)
    k = top_k or plane.settings.default_top_k
    return await _predictions(plane, runtime, pixels, k, plane.settings.abstain_below)


def _summary(status: VersionStatus) -> dict[str, Any]:
    card = status.card
    row: dict[str, Any] = {
        "version": str(status.version),
        "state": status.state,
    }
    if status.reason:
        row["reason"] = status.reason
    if status.execution_providers is not None:
        row["execution_providers"] = status.execution_providers
    if card is not None:
        row["card"] = {
            "kind": card.kind,
            "class_names": card.class_names,
            "inputs": [vars(t) for t in card.inputs],
            "outputs": [vars(t) for t in card.outputs],
            "metrics": card.metrics,
            "created": card.created,
            "sha256": card.sha256,
        }
    return row


@router.get("/models", summary="Every model, its versions, their state and card summaries")
async def list_models(plane: Plane) -> dict[str, Any]:
    models = [
        {
            "name": model.name,
            # image_classifier or tensor (the served version's card; None without one)
            "kind": model.served.card.kind if model.served.card is not None else None,
            "served_version": str(model.served.version),
            "state": model.served.state,
            "versions": [_summary(v) for v in reversed(model.versions)],
        }
        for model in plane.models()
    ]
    return {"models": models}


@router.get(
    "/models/{name}",
    summary="The model card of the served version (or ?version=)",
    response_model=None,
    responses=errors(404, 503),
)
async def model_card(plane: Plane, name: str, version: str | None = None) -> JSONResponse:
    """The card as orjson encodes a dataclass (``to_dict`` and FastAPI's encoder walking it
    cost 1.5 ms a request, 40 times the encoding)."""
    status = plane.version_status(name, version)
    if status.card is None:
        raise ModelNotReady(f"model {name!r} version {status.version}: {status.reason}")
    return JSONResponse({"state": status.state, **({"reason": status.reason} if status.reason
                         else {}), "card": status.card})  # fmt: skip
