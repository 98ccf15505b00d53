"""Operations: Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter
from starlette.responses import Response

from service.api.rest.dependencies import Plane
from service.engine.metrics import CONTENT_TYPE_LATEST

router = APIRouter(tags=["Operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(plane: Plane) -> Response:
    return Response(plane.metrics.render(), media_type=CONTENT_TYPE_LATEST)
