"""Operations: Prometheus metrics, rendered off the event loop and shared by the scrapes that
arrive together (``engine/scrapes.py``)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from service.engine.metrics import CONTENT_TYPE_LATEST
from service.engine.scrapes import SharedScrape

router = APIRouter(tags=["Operations"])


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    scrapes: SharedScrape = request.app.state.scrapes
    return Response(await scrapes.scrape(), media_type=CONTENT_TYPE_LATEST)
