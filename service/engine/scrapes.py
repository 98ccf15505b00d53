"""A ``/metrics`` scrape's exposition rendered off the event loop, shared by every scrape that
arrives before its render begins, and within a share of a core: rendered on the loop, a
client's series (one per method and route it tried) made each scrape 39 ms, and four clients
scraping in a loop held health checks at p99 153 ms. Each scrape still gets a render begun
after it arrived, so what it reads is never older than its request."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

RENDER_SHARE = 0.1  # the most of a core that back-to-back renders take (a scrape flood's)


class SharedScrape:
    """``render`` run on a thread of its own, one render at a time, each shared by the scrapes
    waiting for it; after a render of ``t`` s the next begins no sooner than ``t / share - t``
    s later. At most two renders exist: the one running and the one the newest scrapes wait on."""

    def __init__(self, render: Callable[[], bytes], share: float = RENDER_SHARE) -> None:
        self._render, self._share = render, share
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="metrics-render")
        self._lock = asyncio.Lock()  # one render at a time
        self._next: asyncio.Future[bytes] | None = None  # not begun: scrapes arriving share it
        self._free_at = 0.0  # the loop's time before which no render begins
        self._tasks: set[asyncio.Task[None]] = set()

    async def scrape(self) -> bytes:
        """The exposition, rendered after this call began."""
        future = self._next
        if future is None:
            future = self._next = asyncio.get_running_loop().create_future()
            future.add_done_callback(_retrieved)
            task = asyncio.create_task(self._run(future))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return await asyncio.shield(future)

    async def _run(self, future: asyncio.Future[bytes]) -> None:
        loop = asyncio.get_running_loop()
        async with self._lock:
            pause = self._free_at - loop.time()
            if pause > 0:
                await asyncio.sleep(pause)
            self._next = None  # begun: a scrape arriving from now on waits for the next render
            start = time.perf_counter()
            try:
                future.set_result(await loop.run_in_executor(self._executor, self._render))
            except Exception as exc:
                future.set_exception(exc)
            spent = time.perf_counter() - start
            self._free_at = loop.time() + spent * (1 / self._share - 1)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


def _retrieved(future: asyncio.Future[bytes]) -> None:
    """A render whose scrapes all went away: its error is not "never retrieved"."""
    if not future.cancelled():
        future.exception()
