"""An app over a model repository, talked to in-process through httpx's ASGI transport (as
``localhost``, one of the names a server on loopback answers, with the admin token)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx

from service.api.rest.app import create_app
from service.settings import Settings

ADMIN_TOKEN = "test-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def make_settings(repo: Path, **changes: object) -> Settings:
    """Settings for ``repo`` on the CPU, with ``ADMIN_TOKEN`` (``admin_token=None`` for none)."""
    return Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        **{"admin_token": ADMIN_TOKEN, **changes},  # type: ignore[arg-type]
    )


@asynccontextmanager
async def app_client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client talking in-process to the app for ``settings``, its lifespan running; it
    sends the settings' admin token, if any (the ASGI transport's client is 127.0.0.1)."""
    app = create_app(settings)
    token = settings.admin_token
    headers = {"Authorization": f"Bearer {token.get_secret_value()}"} if token else {}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://localhost", headers=headers
        ) as http:
            yield http
