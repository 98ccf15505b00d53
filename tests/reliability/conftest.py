"""Reliability tests: hostile input in-process, faults, load and shutdown against
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


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app over tiny models and the lecture CNN (``cifar10_cnn``)."""
    settings = make_settings(
        make_model_repo(tmp_path),
        max_images_per_request=8,
        max_request_bytes=300_000,
        max_image_pixels=4_000_000,
        poll_interval_s=0,
    )
    async with app_client(settings) as http:
        yield http
