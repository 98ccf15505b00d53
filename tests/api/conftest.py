"""An app over a tiny model repository, talked to in-process through httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from service.api.app import create_app
from service.settings import Settings
from tests.conftest import make_model_repo


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def make_settings(repo: Path, **changes: object) -> Settings:
    return Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        **changes,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking in-process to the app for ``settings``, its lifespan running."""
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-route"])
async def client(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """Every API test runs with v2 infer served by the fast path and by the FastAPI route."""
    settings = make_settings(
        make_model_repo(tmp_path),
        max_images_per_request=8,
        max_request_bytes=200_000,
        v2_fast_path=request.param,
    )
    async with app_client(settings) as http:
        yield http
