"""The batcher's statistics (Triton's extension) and the requests it drops: timed out or
cancelled while queued, never run; each failure counted under Triton's reason for it."""

from __future__ import annotations

import asyncio
import threading
import time

import numpy as np
import pytest

from service.core.errors import Overloaded, TimeoutExpired
from service.engine.batcher import BatchStats, DynamicBatcher, Outputs


class HeldModel:
    """A model whose runs wait until the test lets them go; records the rows of every run."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.running = threading.Event()
        self.runs: list[list[int]] = []
        self.fail = False

    def __call__(self, rows: np.ndarray) -> Outputs:
        self.running.set()
        assert self.release.wait(10)
        self.runs.append([int(r) for r in rows[:, 0]])
        if self.fail:
            raise RuntimeError("the graph blew up")
        return {"twice": rows[:, 0] * 2}


def rows(*tags: int) -> np.ndarray:
    return np.array([[t] for t in tags], dtype=np.int64)


async def _until(condition: threading.Event) -> None:
    while not condition.is_set():
        await asyncio.sleep(0.005)


def test_statistics_count_requests_rows_runs_and_batch_sizes() -> None:
    model = HeldModel()
    batcher = DynamicBatcher(model, max_batch_size=4)
    model.release.set()

    async def main() -> None:
        await batcher.submit(rows(1))  # alone
        await asyncio.gather(*(batcher.submit(rows(t, t)) for t in range(2, 5)))
        await batcher.close()

    asyncio.run(main())
    snap = batcher.statistics.snapshot("m", 1)
    durations = snap.durations
    assert durations["success"].count == 4 and durations["fail"].count == 0
    for key in ("queue", "compute_input", "compute_infer", "compute_output"):
        assert durations[key].count == 4, key
    assert snap.inference_count == 7
    assert snap.execution_count == sum(b.compute_infer.count for b in snap.batch_stats)
    assert sum(b.batch_size * b.compute_infer.count for b in snap.batch_stats) == 7
    assert all(b.batch_size <= 4 for b in snap.batch_stats)
    assert snap.last_inference_ms > 0 and durations["compute_infer"].ns > 0


def test_a_request_whose_timeout_runs_out_while_queued_never_runs() -> None:
    model = HeldModel()
    seen: list[BatchStats] = []
    batcher = DynamicBatcher(model, max_batch_size=8, on_batch=seen.append)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await _until(model.running)  # the first batch is running, held
        start = time.perf_counter()
        with pytest.raises(TimeoutExpired, match="Request timeout expired"):
            await batcher.submit(rows(2), timeout_s=0.05)
        assert time.perf_counter() - start < 1.0  # answered when its time was up
        model.release.set()
        await first
        await batcher.close()

    asyncio.run(main())
    assert model.runs == [[1]]
    snap = batcher.statistics.snapshot("m", 1)
    assert snap.durations["fail"].count == 1 and snap.durations["success"].count == 1
    assert snap.failures == {"REJECTED": 1, "CANCELED": 0, "BACKEND": 0, "OTHER": 0}
    assert snap.inference_count == 1
    assert [s.timed_out for s in seen if not s.rows] == [1]


def test_a_cancelled_queued_request_never_runs() -> None:
    model = HeldModel()
    seen: list[BatchStats] = []
    batcher = DynamicBatcher(model, max_batch_size=8, on_batch=seen.append)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await _until(model.running)
        second = asyncio.ensure_future(batcher.submit(rows(2), timeout_s=30))
        third = asyncio.ensure_future(batcher.submit(rows(3)))
        await asyncio.sleep(0.01)
        second.cancel()
        third.cancel()
        await asyncio.sleep(0.01)  # a cancellation reaches a task on the loop's next turn
        model.release.set()
        await first
        await batcher.close()

    asyncio.run(main())
    assert model.runs == [[1]]
    snap = batcher.statistics.snapshot("m", 1)
    assert snap.durations["fail"].count == 2 and snap.failures["CANCELED"] == 2
    assert snap.failures["REJECTED"] == 0
    assert [s.cancelled for s in seen if not s.rows] == [2]


def test_a_request_already_running_finishes_past_its_timeout() -> None:
    model = HeldModel()
    batcher = DynamicBatcher(model, max_batch_size=8)

    async def main() -> Outputs:
        request = asyncio.ensure_future(batcher.submit(rows(5), timeout_s=0.05))
        await _until(model.running)
        await asyncio.sleep(0.1)  # past its timeout, but it is no longer queued
        model.release.set()
        result = await request
        await batcher.close()
        return result

    assert asyncio.run(main())["twice"].tolist() == [10]


def test_failed_requests_are_counted_as_fail() -> None:
    model = HeldModel()
    model.fail = True
    model.release.set()
    batcher = DynamicBatcher(model, max_batch_size=8)

    async def main() -> None:
        with pytest.raises(RuntimeError):
            await batcher.submit(rows(1))
        await batcher.close()

    asyncio.run(main())
    snap = batcher.statistics.snapshot("m", 1)
    assert snap.durations["fail"].count == 1 and snap.durations["success"].count == 0
    assert snap.failures == {"REJECTED": 0, "CANCELED": 0, "BACKEND": 1, "OTHER": 0}
    assert snap.inference_count == 0


def test_a_full_queue_refuses_as_rejected_and_the_queued_requests_are_counted() -> None:
    model = HeldModel()
    batcher = DynamicBatcher(model, max_batch_size=1, max_queue_rows=2)

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(rows(1)))
        await _until(model.running)  # taken: no longer queued
        queued = [asyncio.ensure_future(batcher.submit(rows(t))) for t in (2, 3)]
        await asyncio.sleep(0.01)
        assert batcher.queued_requests == 2
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.submit(rows(4))
        model.release.set()
        await asyncio.gather(first, *queued)
        assert batcher.queued_requests == 0
        await batcher.close()

    asyncio.run(main())
    snap = batcher.statistics.snapshot("m", 1)
    assert snap.durations["fail"].count == 1 and snap.failures["REJECTED"] == 1
    assert snap.durations["success"].count == 3
