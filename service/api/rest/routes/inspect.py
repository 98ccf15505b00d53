"""Layer-shape inspection: the served graph's layer table in the lecture's terms."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response

from service.api.rest.dependencies import Plane
from service.api.rest.http_io import JSONResponse
from service.api.rest.schemas import LayerTableResponse, errors
from service.core.shapes import format_table

router = APIRouter(prefix="/v1", tags=["Inspection"])


@router.get(
    "/models/{name}/layers",
    summary="Layer table of the served graph: output shapes and parameter counts",
    response_model=None,
    responses={
        200: {
            "model": LayerTableResponse,
            "content": {"text/plain": {"example": 'Model: "cifar10_cnn v1"\n...'}},
        },
        **errors(404, 422, 503),
    },
)
async def layers(plane: Plane, name: str, format: Literal["json", "text"] = "json") -> Response:
    served = plane.layers(name)
    if format == "text":
        title = f"{name} v{served.version}"
        return PlainTextResponse(format_table(served.table, title) + "\n")
    body: dict[str, Any] = {
        "model_name": name,
        "model_version": str(served.version),
        **served.report.as_dict(),
    }
    return JSONResponse(body)
