"""Operations: Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.api.app import service_state
from service.engine.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["Operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(service_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)
