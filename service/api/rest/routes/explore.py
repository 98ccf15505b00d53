"""Exploring the lecture: the shape calculator, a model's feature maps, and the page at ``/``.

    curl -H 'Content-Type: application/json' localhost:8000/v1/shapes \
         -d '{"input_shape": [227, 227, 3], "layers": [{"type": "conv2d", "filters": 96,
              "kernel": 11, "stride": 4}]}'
    curl -F file=@cat.png 'localhost:8000/v1/models/cifar10_cnn/activations?layer=conv2d&format=png'
"""

from __future__ import annotations

from importlib import resources
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response

from service.api.feature_grid import render_feature_grid
from service.api.images import decode_image_files, image_limits
from service.api.rest.activations_body import (
    ActivationsRequest,
    decode_activations_body,
    layer_names,
)
from service.api.rest.dependencies import Plane
from service.api.rest.http_io import (
    JSON,
    MULTIPART,
    JSONResponse,
    is_json_type,
    media_type,
    multipart_form,
    read_json_body,
    validated_body,
)
from service.api.rest.json_wire import dumps, loads
from service.api.rest.predict import NESTED_JSON_COST
from service.api.rest.schemas import errors, json_body
from service.core.errors import (
    InvalidLayerSpec,
    UnprocessableInput,
    UnsupportedMediaType,
)
from service.core.shapes import MAX_LAYERS, format_table, layer_table
from service.dataplane.dataplane import DataPlane
from service.dataplane.kinds import require_image
from service.engine.activations import Activation

router = APIRouter(tags=["Explore"])


class ShapesRequest(BaseModel):
    # Lengths bounded here, before pydantic checks (and names) every item: 340,000 wrong items
    # took 1.7 s of the event loop and a 16 MB answer.
    input_shape: list[int] = Field(
        examples=[[32, 32, 3]], description="(H, W, C) of one image.", max_length=3
    )
    # Each layer is checked by the layer arithmetic itself, which names the layer and the rule.
    layers: list[Any] = Field(
        max_length=MAX_LAYERS,
        description=(
            "Layer specs as training writes them: conv2d (filters, kernel, stride, padding "
            "'valid'/'same'/integer, activation, bias), max_pool and avg_pool (pool, stride), "
            "flatten, dense (units, activation, bias), dropout (rate), batch_norm, "
            "activation (fn); optional name."
        ),
        json_schema_extra={"items": {"type": "object"}},
    )


class ShapeRow(BaseModel):
    name: str = Field(examples=["conv2d"])
    type: str = Field(examples=["conv2d"])
    output_shape: list[int] = Field(examples=[[30, 30, 32]], description="Without the batch axis.")
    params: int = Field(examples=[896])
    trainable_params: int = Field(examples=[896])
    note: str | None = Field(None, description="Floored sizes; batch norm's trainable split.")


class ShapesResponse(BaseModel):
    strict: bool
    floored: bool = Field(description="Some size was not whole and was floored, as Keras does.")
    input_shape: list[int]
    layers: list[ShapeRow]
    total_params: int
    trainable_params: int
    non_trainable_params: int
    notes: list[str]


class LayerActivations(BaseModel):
    name: str = Field(examples=["conv2d"])
    type: str = Field(examples=["conv2d"])
    shape: list[int] = Field(examples=[[30, 30, 32]])
    layout: Literal["HWC", "N"]
    min: float
    max: float
    values: list[Any] = Field(description="Nested as ``shape`` says.")


class ActivationsResponse(BaseModel):
    model_name: str
    model_version: str
    layers: list[LayerActivations]


SHAPES_EXAMPLE = {
    "input_shape": [227, 227, 3],
    "layers": [{"type": "conv2d", "filters": 96, "kernel": 11, "stride": 4, "padding": 0}],
}
ACTIVATIONS_EXAMPLE = {"instances": [{"b64": "<base64 PNG or JPEG>"}], "layer": "conv2d"}
STATIC_FILES = {
    "page.js": "text/javascript; charset=utf-8",
    "monitor.js": "text/javascript; charset=utf-8",
    "page.css": "text/css; charset=utf-8",
}
# The page makes no request outside this server; the browser enforces it too.
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; "
        "style-src 'self'; script-src 'self'; object-src 'none'; base-uri 'none'; "
        "frame-ancestors 'none'"  # no other site may frame the page (clickjacking)
    ),
    "X-Frame-Options": "DENY",  # the same, for browsers without CSP level 2
    "Cache-Control": "no-cache",
}

Strict = Annotated[
    bool,
    Query(description="Refuse sizes that are not whole numbers instead of flooring them (Keras)."),
]
LayerNames = Annotated[
    list[str] | None,
    Query(description="Layer name(s) from the layer table; none: every conv and pool layer."),
]


@router.post(
    "/v1/shapes",
    summary="Shape calculator: output shape and parameters of each layer of a stack",
    response_model=None,
    responses={
        200: {
            "model": ShapesResponse,
            "content": {"text/plain": {"example": 'Model: "sequential"\n...'}},
        },
        **errors(400, 413, 415, 422),
    },
    openapi_extra=json_body(ShapesRequest, SHAPES_EXAMPLE),
)
async def shapes(
    request: Request, strict: Strict = False, format: Literal["json", "text"] = "json"
) -> Response:
    body = loads(await read_json_body(request))
    spec = validated_body(ShapesRequest, body, InvalidLayerSpec)
    table = layer_table(spec.input_shape, spec.layers, strict=strict)
    if format == "text":
        return Response(format_table(table) + "\n", media_type="text/plain; charset=utf-8")
    floored = any(row.note.startswith("fractional") for row in table.rows)
    return JSONResponse({"strict": strict, "floored": floored, **table.as_dict()})


# -- feature maps ---------------------------------------------------------------------------


async def _multipart_image(
    request: Request, plane: DataPlane, size: tuple[int, int]
) -> tuple[np.ndarray, list[str]]:
    max_bytes = plane.settings.max_request_bytes
    async with multipart_form(request, 2, "one image per request", max_bytes, 20) as form:
        files = [(k, v) for k, v in form.multi_items() if isinstance(v, UploadFile)]
        if len(files) != 1:
            raise UnprocessableInput(
                f"send exactly one image file (-F file=@image.png), got {len(files)}"
            )
        field, upload = files[0]
        where = f"image ({field}={upload.filename or 'unnamed'})"
        data = await upload.read()
        names = [v for v in form.getlist("layer") if isinstance(v, str)]
    (image,) = await decode_image_files(plane.work, [(data, where)], size, plane.settings)
    return image, layer_names(names, "'layer'")


async def _json_image(
    request: Request, plane: DataPlane, shape: tuple[int, int, int]
) -> tuple[np.ndarray, list[str]]:
    raw = await request.body()
    light = len(raw) <= plane.settings.inline_decode_bytes // NESTED_JSON_COST
    limits = image_limits(plane.settings)
    return await plane.work.run_decoding(
        len(raw), light, decode_activations_body, raw, shape, limits, not light
    )


def _layer_json(values: np.ndarray) -> dict[str, Any]:
    return {
        "shape": list(values.shape),
        "layout": "HWC" if values.ndim == 3 else "N",
        "min": float(values.min()),
        "max": float(values.max()),
        "values": values,
    }


@router.post(
    "/v1/models/{name}/activations",
    summary="A layer's activations for one image: JSON values or a PNG grid of feature maps",
    response_model=None,
    responses={
        200: {"model": ActivationsResponse, "content": {"image/png": {}}},
        **errors(400, 404, 413, 415, 422, 503),
    },
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": ActivationsRequest.model_json_schema(),
                    "example": ACTIVATIONS_EXAMPLE,
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {
                            "file": {"type": "string", "format": "binary"},
                            "layer": {"type": "string"},
                        },
                        "required": ["file"],
                    }
                },
            },
        }
    },
)
async def activations(
    request: Request,
    plane: Plane,
    name: str,
    layer: LayerNames = None,
    format: Literal["json", "png"] = "json",
) -> Response:
    runtime = require_image(plane.model(name), "feature maps")  # 404 unknown, 503 unavailable
    h, w, c = runtime.image_shape
    content_type = request.headers.get("content-type")
    if media_type(content_type) == MULTIPART:
        image, body_names = await _multipart_image(request, plane, (h, w))
    elif is_json_type(content_type):
        image, body_names = await _json_image(request, plane, (h, w, c))
    else:
        raise UnsupportedMediaType(
            f"expected multipart/form-data or application/json, got {media_type(content_type)!r}"
        )
    names = [*(layer or []), *body_names]
    if format == "png":
        png = await plane.activations(runtime, image, names, render_feature_grid)
        return Response(png, media_type="image/png")

    def encoded(results: list[Activation]) -> bytes:  # on the pool, with the run
        layers = [
            {"name": a.layer.name, "type": a.layer.type, **_layer_json(a.values)} for a in results
        ]
        return dumps(
            {"model_name": runtime.name, "model_version": str(runtime.version), "layers": layers}
        )

    return Response(await plane.activations(runtime, image, names, encoded), media_type=JSON)


# -- the page -------------------------------------------------------------------------------


def _static(name: str) -> str:
    return resources.files("service.api.rest").joinpath("static", name).read_text(encoding="utf-8")


@router.get("/", summary="The explorer page", response_class=HTMLResponse, include_in_schema=False)
async def page() -> HTMLResponse:
    return HTMLResponse(_static("index.html"), headers=PAGE_HEADERS)


@router.get("/static/{file}", summary="The page's script and style", include_in_schema=False)
async def static(file: str) -> Response:
    media_type = STATIC_FILES.get(file)
    if media_type is None:
        raise HTTPException(404, f"no static file {file!r}")
    return Response(_static(file), media_type=media_type, headers=PAGE_HEADERS)
