"""The bounded pool where a request's CPU work runs (decoding bodies and images, encoding feature
maps), so the event loop only waits for it and keeps answering everyone else."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import TypeVar

from service.core.errors import Overloaded
from service.engine import thread_policy

T = TypeVar("T")


class TooHeavyForTheLoop(Exception):
    """Raised by work begun on the event loop that finds itself heavier than it looked (a small
    image file that decodes to many pixels); ``run_here_if_light`` runs it again on the pool."""


def on_event_loop() -> bool:
    """Whether the caller runs on an event loop's thread (not on a pool thread)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class WorkPool:
    """``threads`` threads, and at most ``max_waiting`` jobs queued behind them: past that a
    request is refused (503, retry) rather than queueing work without end."""

    def __init__(
        self,
        threads: int,
        max_waiting: int,
        scheduling: thread_policy.ThreadScheduling = "batch",
    ) -> None:
        self._executor = thread_policy.executor(scheduling, threads, "request-work")
        self._capacity = threads + max_waiting
        self._taken = 0  # jobs queued or running; touched on the event loop only

    @property
    def taken(self) -> int:
        return self._taken

    async def run(self, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` on a pool thread. A caller that is cancelled stops waiting; the job
        still counts against the bound until it has really finished."""
        if self._taken >= self._capacity:
            raise Overloaded("the server is busy decoding other requests; retry shortly")
        loop = asyncio.get_running_loop()
        job = self._executor.submit(work, *args)
        self._taken += 1
        job.add_done_callback(lambda _: self._finished(loop))
        return await asyncio.wrap_future(job)

    async def run_here_if_light(self, light: bool, work: Callable[..., T], *args: object) -> T:
        """``work(*args)`` right here when ``light`` (a thread hop costs about 0.3 ms, more than
        decoding a small body), else on the pool; light work that finds itself heavy raises
        ``TooHeavyForTheLoop`` and is run again on the pool."""
        if light:
            try:
                return work(*args)
            except TooHeavyForTheLoop:
                pass
        return await self.run(work, *args)

    def _finished(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the job's thread: give its place back, on the loop that counts them."""
        with contextlib.suppress(RuntimeError):  # a closed loop (shutdown) counts nothing
            loop.call_soon_threadsafe(self._release)

    def _release(self) -> None:
        self._taken -= 1

    def close(self) -> None:
        """Drop queued jobs; running ones finish on their threads."""
        self._executor.shutdown(wait=False, cancel_futures=True)
