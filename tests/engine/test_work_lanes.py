"""A lane of the work pool: one kind of costly work (the explorer's feature maps) takes at most
its share of the pool's threads, each place held until its job has really finished, and a few
callers wait their turn; past them a 503."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from service.core.errors import Overloaded
from service.engine.work_pool import WorkPool


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def pool() -> Iterator[WorkPool]:
    work = WorkPool(threads=2, max_waiting=0)
    yield work
    work.close()


class Job:
    """Work that runs until let go, saying when it started."""

    def __init__(self) -> None:
        self.started, self.go = threading.Event(), threading.Event()

    def __call__(self) -> str:
        self.started.set()
        assert self.go.wait(10)
        return "done"


async def started(job: Job) -> bool:
    return await asyncio.to_thread(job.started.wait, 2)


@pytest.mark.anyio
async def test_one_job_at_a_time_and_a_place_is_held_until_the_work_really_ends(
    pool: WorkPool,
) -> None:
    lane = pool.lane(1, 2, "busy")
    first, second = Job(), Job()
    running = asyncio.create_task(lane.run(first))
    assert await started(first)
    waiting = asyncio.create_task(lane.run(second))
    running.cancel()  # the first caller goes away: its job still holds the lane's place
    with pytest.raises(asyncio.CancelledError):
        await running
    assert not await asyncio.to_thread(second.started.wait, 0.3)
    assert await pool.run(str, 7) == "7"  # the pool's other thread is free for other work
    first.go.set()
    assert await started(second)
    second.go.set()
    assert await waiting == "done"
    assert await lane.run(str, 1) == "1"  # every place came back


@pytest.mark.anyio
async def test_past_the_waiting_callers_a_503_and_one_that_went_away_frees_its_turn(
    pool: WorkPool,
) -> None:
    lane = pool.lane(1, 1, "the explorer is busy")
    first, late = Job(), Job()
    running = asyncio.create_task(lane.run(first))
    assert await started(first)
    waiting = asyncio.create_task(lane.run(late))
    await asyncio.sleep(0.05)
    with pytest.raises(Overloaded, match="the explorer is busy"):
        await lane.run(str, 1)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    again = asyncio.create_task(lane.run(str, 2))  # the turn it left is free
    await asyncio.sleep(0.05)
    assert not late.started.is_set() and not again.done()
    first.go.set()
    assert await running == "done"
    assert await again == "2"


@pytest.mark.anyio
async def test_a_job_the_pool_refuses_gives_its_place_back() -> None:
    pool = WorkPool(threads=1, max_waiting=0)
    try:
        lane = pool.lane(1, 0, "busy")
        other = Job()
        holding = asyncio.create_task(pool.run(other))  # the pool's only place, outside the lane
        assert await started(other)
        with pytest.raises(Overloaded, match="decoding other requests"):
            await lane.run(str, 1)
        other.go.set()
        await holding
        assert await lane.run(str, 3) == "3"
    finally:
        pool.close()


@pytest.mark.anyio
async def test_a_job_that_cannot_be_submitted_gives_its_place_back() -> None:
    """A closed pool (shutdown) refuses the job at submit: the lane's place came back never."""
    pool = WorkPool(threads=1, max_waiting=0)
    lane = pool.lane(1, 0, "busy")
    pool.close()
    for _ in range(2):
        with pytest.raises(RuntimeError, match="shutdown"):
            await lane.run(str, 1)
