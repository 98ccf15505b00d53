"""Operations: Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.api.state import State
from service.engine.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["Operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(state: State) -> Response:
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
