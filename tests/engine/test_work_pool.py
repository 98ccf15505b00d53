"""The work pool: work runs off the loop's thread, light work stays on it unless it finds itself
heavy, and the queue is bounded (503) and freed again when jobs really finish."""

from __future__ import annotations

import asyncio
import os
import threading

import pytest

from service.core.errors import Overloaded
from service.engine.thread_policy import ThreadScheduling
from service.engine.work_pool import TooHeavyForTheLoop, WorkPool, on_event_loop


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def where() -> tuple[str, bool]:
    return threading.current_thread().name, on_event_loop()


@pytest.mark.anyio
async def test_work_runs_on_a_pool_thread_and_light_work_stays_on_the_loop() -> None:
    pool = WorkPool(threads=1, max_waiting=0)
    try:
        name, on_loop = await pool.run(where)
        assert name.startswith("request-work") and not on_loop
        name, on_loop = await pool.run_here_if_light(True, where)
        assert name == threading.current_thread().name and on_loop
        name, on_loop = await pool.run_here_if_light(False, where)
        assert name.startswith("request-work")
    finally:
        pool.close()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("scheduling", "policy"), [("batch", os.SCHED_BATCH), ("normal", os.SCHED_OTHER)]
)
async def test_pool_threads_are_scheduled_as_configured(
    scheduling: ThreadScheduling, policy: int
) -> None:
    pool = WorkPool(threads=1, max_waiting=0, scheduling=scheduling)
    try:
        assert await pool.run(os.sched_getscheduler, 0) == policy
    finally:
        pool.close()


@pytest.mark.anyio
async def test_light_work_that_finds_itself_heavy_is_run_again_on_the_pool() -> None:
    calls: list[bool] = []

    def decode() -> str:
        calls.append(on_event_loop())
        if on_event_loop():
            raise TooHeavyForTheLoop
        return threading.current_thread().name

    pool = WorkPool(threads=1, max_waiting=0)
    try:
        assert (await pool.run_here_if_light(True, decode)).startswith("request-work")
        assert calls == [True, False]
    finally:
        pool.close()


@pytest.mark.anyio
async def test_past_its_threads_and_queue_the_pool_refuses_until_jobs_finish() -> None:
    release = threading.Event()
    pool = WorkPool(threads=1, max_waiting=1)
    try:
        first = asyncio.ensure_future(pool.run(release.wait, 10))
        second = asyncio.ensure_future(pool.run(release.wait, 10))
        await asyncio.sleep(0.05)
        assert pool.taken == 2
        with pytest.raises(Overloaded):
            await pool.run(where)
        first.cancel()  # its caller stops waiting; the running job keeps its place until done
        await asyncio.sleep(0.05)
        assert pool.taken == 2
        release.set()
        assert await second is True
        for _ in range(100):
            if pool.taken == 0:
                break
            await asyncio.sleep(0.01)
        assert pool.taken == 0
        assert (await pool.run(where))[0].startswith("request-work")
    finally:
        release.set()
        pool.close()
