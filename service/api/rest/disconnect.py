"""A REST request whose client goes away while it waits is dropped: ``unless_disconnected``
watches the connection during the work and cancels the work on ``http.disconnect``, so a request
still queued for a model never reaches it (the batcher skips cancelled requests)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None when the client disconnected first (nobody to answer).

    Call it once the body has been read: from then on ``receive`` only answers
    ``http.disconnect``, when the client closes the connection or the response is complete."""
    task = asyncio.current_task()
    assert task is not None
    left = False

    async def watch() -> None:
        nonlocal left
        if (await receive())["type"] == "http.disconnect":
            left = True
            task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise  # cancelled from outside (shutdown): not ours to swallow
        task.uncancel()
        return None
    finally:
        watcher.cancel()
