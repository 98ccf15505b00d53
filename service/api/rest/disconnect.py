"""A REST request whose client goes away while it waits is dropped: ``unless_disconnected``
watches the connection during the work and cancels the work on ``http.disconnect``, so a request
still queued for a model never reaches it (the batcher skips cancelled requests).

The watch starts only once the work has taken ``WATCH_AFTER_S``: a request answered sooner costs a
deadline on the loop's shared timer (``deadlines``), not a task of its own. A client that left
earlier is still seen then, as uvicorn keeps the disconnect for the next ``receive``. At 50 ms a
request under load (64 clients on one core, p99 about 30 ms) is answered before its watch would
start: at 2 ms every such request started one, a task made, parked on ``receive`` and cancelled,
which cost 4 % of requests/s (docs/benchmarks.md, "The 64-client p99"); a client that leaves a
request queued for longer than that is still dropped before its run."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from starlette.types import Receive

from service.api.rest.deadlines import for_running_loop

T = TypeVar("T")
WATCH_AFTER_S = 0.05


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

    deadlines = for_running_loop()
    key = deadlines.add(asyncio.get_running_loop().time() + WATCH_AFTER_S, start)
    try:
        return await work
    except asyncio.CancelledError:
        if not left:
            raise  # cancelled from outside (shutdown): not ours to swallow
        task.uncancel()
        return None
    finally:
        deadlines.drop(key)
        if watcher is not None:
            watcher.cancel()
