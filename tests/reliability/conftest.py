"""Reliability tests: hostile input in-process (both v2 paths), faults, load and shutdown against
real servers on loopback."""

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


@pytest.fixture(params=[True, False], ids=["fast-path", "fastapi-route"])
async def client(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[httpx.AsyncClient]:
    """The app over tiny models and the lecture CNN (``cifar10_cnn``), v2 infer on either path."""
    settings = make_settings(
        make_model_repo(tmp_path),
        max_images_per_request=8,
        max_request_bytes=300_000,
        max_image_pixels=4_000_000,
        poll_interval_s=0,
        v2_fast_path=request.param,
    )
    async with app_client(settings) as http:
        yield http
