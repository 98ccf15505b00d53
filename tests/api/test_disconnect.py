"""``unless_disconnected``: work answered before the watch starts never touches the connection;
a client that left while its work waits is seen once the watch starts and the work is cancelled;
a cancellation from outside is not swallowed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from service.api.rest import disconnect
from service.api.rest.deadlines import for_running_loop
from service.api.rest.disconnect import unless_disconnected


class Connection:
    """An ASGI ``receive`` after the body: it answers ``http.disconnect`` once the client has
    left (at once if it already has), and counts its calls."""

    def __init__(self, gone: bool) -> None:
        self.calls = 0
        self.gone = asyncio.Event()
        if gone:
            self.gone.set()

    async def __call__(self) -> dict[str, Any]:
        self.calls += 1
        await self.gone.wait()
        return {"type": "http.disconnect"}


@pytest.fixture
def quick_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(disconnect, "WATCH_AFTER_S", 0.01)


def test_work_done_before_the_watch_starts_never_reads_the_connection(quick_watch: None) -> None:
    async def main() -> tuple[str | None, int, int]:
        connection = Connection(gone=True)
        result = await unless_disconnected(connection, asyncio.sleep(0, "answer"))
        await asyncio.sleep(0.03)  # past the watch's deadline: it was dropped, nothing starts
        return result, connection.calls, len(for_running_loop())

    assert asyncio.run(main()) == ("answer", 0, 0)


def test_a_client_that_left_is_seen_when_the_watch_starts_and_the_work_is_cancelled(
    quick_watch: None,
) -> None:
    cancelled = False

    async def slow() -> str:
        nonlocal cancelled
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled = True
            raise
        return "answer"

    async def main() -> tuple[str | None, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        result = await unless_disconnected(Connection(gone=True), slow())
        return result, loop.time() - start

    result, took = asyncio.run(main())
    assert result is None and cancelled
    assert took < 1


def test_a_cancellation_from_outside_is_not_swallowed(quick_watch: None) -> None:
    async def main() -> None:
        work = asyncio.ensure_future(unless_disconnected(Connection(gone=False), asyncio.sleep(5)))
        await asyncio.sleep(0.05)  # the watch has started and waits on the connection
        work.cancel()
        await work

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(main())
