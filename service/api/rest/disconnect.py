"""A REST request whose client goes away while it waits is dropped: ``unless_disconnected``
watches the connection during the work and cancels the work on ``http.disconnect``, so a request
still queued for a model never reaches it (the batcher skips cancelled requests).

The watch starts only once the work has taken ``WATCH_AFTER_S``: a request answered sooner (most,
when the model is not busy) costs a timer, not a task. A client that left earlier is still seen
then, as uvicorn keeps the disconnect for the next ``receive``."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

T = TypeVar("T")
WATCH_AFTER_S = 0.002


async def unless_disconnected(receive: Receive, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None when the client disconnected first (nobody to answer).

    Call it once the body has been read: from then on ``receive`` only answers
    ``http.disconnect``, when the client closes the connection or the response is complete."""
    task = asyncio.current_task()
    assert task is not None
    left = False
    watcher: asyncio.Task[None] | None = None

    async def watch() -> None:
        nonlocal left
        if (await receive())["type"] == "http.disconnect":
            left = True
            task.cancel()

    def start() -> None:
        nonlocal watcher
        watcher = asyncio.ensure_future(watch())

    timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, start)
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise  # cancelled from outside (shutdown): not ours to swallow
        task.uncancel()
        return None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()
