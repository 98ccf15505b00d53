"""The work pool: work runs off the loop's thread, light work stays on it unless it finds itself
heavy, the largest decoding runs in a child process, and the queue is bounded (503) and freed
again when jobs really finish."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import threading
import weakref
from collections.abc import Iterator

import numpy as np
import pytest

from service.api.rest.codec import decode_infer_request
from service.api.rest.json_wire import loads
from service.core.errors import InvalidInput, Overloaded
from service.engine import work_pool
from service.engine.thread_policy import ThreadScheduling
from service.engine.work_pool import (
    TooHeavyForTheLoop,
    TooHeavyForThisProcess,
    WorkPool,
    heavy_allowed,
    on_event_loop,
)


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


@pytest.fixture
def pool() -> Iterator[WorkPool]:
    """A pool whose child decodes from 1,000 bytes up; closed after the test."""
    work = WorkPool(threads=1, max_waiting=0, process_bytes=1000)
    yield work
    work.close()


@pytest.mark.anyio
async def test_work_for_the_process_runs_in_a_child_scheduled_as_the_threads(
    pool: WorkPool,
) -> None:
    child = await pool.run_in_process(os.getpid)
    assert child != os.getpid()
    assert await pool.run_in_process(os.getpid) == child  # one child, kept
    assert await pool.run_in_process(os.sched_getscheduler, 0) == os.SCHED_BATCH


@pytest.mark.anyio
async def test_decoding_runs_here_when_light_in_the_child_when_large_else_on_a_thread(
    pool: WorkPool,
) -> None:
    assert await pool.run_decoding(5000, True, os.getpid) == os.getpid()  # light: here
    assert await pool.run_decoding(999, False, threading.get_ident) != threading.get_ident()
    assert await pool.run_decoding(999, False, os.getpid) == os.getpid()  # a thread
    assert await pool.run_decoding(1000, False, os.getpid) != os.getpid()  # the child
    never = WorkPool(threads=1, max_waiting=0)  # process_bytes 0: no child, ever
    try:
        assert await never.run_decoding(10**9, False, os.getpid) == os.getpid()
    finally:
        never.close()


@pytest.mark.anyio
async def test_an_error_in_the_child_reaches_the_caller_as_it_was_raised(pool: WorkPool) -> None:
    with pytest.raises(InvalidInput, match="the request body is empty; expected JSON"):
        await pool.run_in_process(loads, b"")
    assert pool.taken == 0


@pytest.mark.anyio
async def test_a_v2_body_decodes_in_the_child_as_it_does_here(pool: WorkPool) -> None:
    """What v2 infer sends to the child: the request comes back whole, numpy arrays included."""
    pixels = np.arange(2 * 4 * 4 * 3) % 256
    body = json.dumps({"id": "a", "inputs": [{"name": "images", "shape": [2, 4, 4, 3],
                       "datatype": "UINT8", "data": pixels.tolist()}]}).encode()  # fmt: skip
    there = await pool.run_in_process(decode_infer_request, body, None, 64)
    here = decode_infer_request(body, None, 64)
    assert there.id == here.id == "a"
    assert [(t.name, t.datatype, t.shape) for t in there.inputs] == [
        (t.name, t.datatype, t.shape) for t in here.inputs
    ]
    np.testing.assert_array_equal(there.inputs[0].data, here.inputs[0].data)
    assert there.inputs[0].data.dtype == np.uint8


@pytest.mark.anyio
async def test_a_child_that_dies_costs_its_request_a_503_and_the_next_gets_a_new_child(
    pool: WorkPool,
) -> None:
    first = await pool.run_in_process(os.getpid)
    with pytest.raises(Overloaded, match="stopped"):
        await pool.run_in_process(os._exit, 1)  # as the kernel's OOM killer would
    assert pool.taken == 0
    second = await pool.run_in_process(os.getpid)
    assert second not in (first, os.getpid())


@pytest.mark.anyio
async def test_a_child_that_died_idle_is_replaced_before_the_next_job_is_given_to_it(
    pool: WorkPool,
) -> None:
    first = await pool.run_in_process(os.getpid)
    os.kill(first, signal.SIGKILL)  # between jobs: no request of its own to lose
    for _ in range(500):  # until the executor has seen it go: it marks itself broken, then reaps
        await asyncio.sleep(0.01)
        try:
            os.kill(first, 0)
        except ProcessLookupError:
            break
    second = await pool.run_in_process(os.getpid)  # answered, not a 503
    assert second not in (first, os.getpid())


def heavy_work() -> tuple[int, bool]:
    """Where it ran: work that may only run where holding the interpreter for long may."""
    if not heavy_allowed():
        raise TooHeavyForThisProcess
    return os.getpid(), on_event_loop()


@pytest.mark.anyio
async def test_work_too_heavy_for_this_process_runs_again_in_the_child(pool: WorkPool) -> None:
    for size, light in [(10, True), (500, False)]:  # begun here, and on a thread
        pid, _ = await pool.run_decoding(size, light, heavy_work)
        assert pid != os.getpid()
    assert not heavy_allowed()
    never = WorkPool(threads=1, max_waiting=0)  # no child, ever: a thread allowed to
    try:
        assert await never.run_decoding(10, True, heavy_work) == (os.getpid(), False)
        assert await never.run_decoding(10, False, heavy_allowed) is False  # that thread only
    finally:
        never.close()


@pytest.mark.anyio
async def test_where_no_child_can_start_large_bodies_are_decoded_on_a_thread(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def no_semaphores(*_: object, **__: object) -> None:
        raise OSError(38, "Function not implemented")  # sem_open where /dev/shm is missing

    monkeypatch.setattr(work_pool, "ProcessPoolExecutor", no_semaphores)
    pool = WorkPool(threads=1, max_waiting=0, process_bytes=1000)
    try:
        assert await pool.run_decoding(5000, False, os.getpid) == os.getpid()  # a thread here
        assert "decoded on the pool's threads" in caplog.text
        assert pool.process_bytes == 0  # later bodies go to the threads without trying
        assert await pool.run_decoding(10, True, heavy_work) == (os.getpid(), False)
        assert await pool.run_decoding(5000, False, threading.get_ident) != threading.get_ident()
    finally:
        pool.close()


class Decoded:
    """Stands for what a job made before it failed (a request's decoded values)."""


def fail_holding(made: list[weakref.ref[Decoded]]) -> None:
    values = Decoded()
    made.append(weakref.ref(values))
    raise InvalidInput("a value out of range")


@pytest.mark.anyio
async def test_a_failed_job_lets_go_of_what_it_made_without_a_collection() -> None:
    """With the collector's thresholds set high (GC_GEN0_THRESHOLD) a reference cycle is kept
    for long: a failed job's error must not hold its frames in one (every gRPC message refused
    while decoding on the pool kept its decoded values, 52 MB for 3.1 MB sent)."""
    pool = WorkPool(threads=1, max_waiting=4)
    made: list[weakref.ref[Decoded]] = []
    gc.disable()
    try:
        with contextlib.suppress(InvalidInput):
            await pool.run(fail_holding, made)
        await asyncio.sleep(0)  # the loop lets go of the callback that woke this task
        assert made[0]() is None
    finally:
        gc.enable()
        pool.close()
