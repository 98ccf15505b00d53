"""The API tests' fixtures: an app over a tiny model repository, talked to in-process through
httpx's ASGI transport (``tests.support.apps``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.apps import app_client, make_settings
from tests.support.models import make_model_repo


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = make_settings(
        make_model_repo(tmp_path), max_images_per_request=8, max_request_bytes=200_000
    )
    async with app_client(settings) as http:
        yield http
