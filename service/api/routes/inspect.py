"""Layer-shape inspection: the served graph's layer table in the lecture's terms."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from starlette.responses import PlainTextResponse, Response

from service.api.http_io import JSONResponse
from service.api.schemas import LayerTableResponse, errors
from service.api.state import State
from service.core.errors import InvalidCard
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
async def layers(state: State, name: str, format: Literal["json", "text"] = "json") -> Response:
    runtime = state.repository.get(name)  # 404 unknown, 503 unavailable
    # The entry of that very version: a reload since ``get`` may serve another one by now.
    entry = state.repository.entry(name, runtime.version)
    report = entry.layers
    if report is None or report.table is None:
        raise InvalidCard(report.error if report else "no layer table for this model")
    if format == "text":
        title = f"{name} v{runtime.version}"
        return PlainTextResponse(format_table(report.table, title) + "\n")
    body: dict[str, Any] = {
        "model_name": name,
        "model_version": str(runtime.version),
        **report.as_dict(),
    }
    return JSONResponse(body)
