"""The dynamic batcher: coalescing, order, splitting, back-pressure, failures, cancellation."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service.core.errors import Overloaded
from service.engine.batcher import BatchStats, DynamicBatcher, Outputs, Rows, Tagged


def fake_model(rows: np.ndarray) -> Outputs:
    """Stands in for session.run: one output row per input row, derived from its pixels."""
    flat = rows.reshape(len(rows), -1).astype(np.int64)
    return {"sum": flat.sum(axis=1), "first": flat[:, 0].copy()}


class SlowModel:
    """A model that takes a while, counts its runs, and can be made to fail once."""

    def __init__(self, seconds: float = 0.05) -> None:
        self.seconds = seconds
        self.batches: list[int] = []
        self.fail_next = False
        self.started = threading.Event()

    def __call__(self, rows: np.ndarray) -> Outputs:
        self.started.set()
        time.sleep(self.seconds)
        self.batches.append(len(rows))
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the graph blew up")
        return fake_model(rows)


def images(n: int, tag: int) -> np.ndarray:
    out = np.zeros((n, 2, 2, 3), dtype=np.uint8)
    out[:, 0, 0, 0] = (np.arange(n) + tag) % 256
    return out


def check(rows: np.ndarray, result: Outputs) -> None:
    np.testing.assert_array_equal(result["first"], rows[:, 0, 0, 0])
    np.testing.assert_array_equal(result["sum"], fake_model(rows)["sum"])


def test_batcher_returns_rows_in_request_order() -> None:
    model = SlowModel()
    batcher = DynamicBatcher(model, max_batch_size=64)

    async def main() -> None:
        requests = [images(n, tag=10 * i) for i, n in enumerate([1, 3, 2, 5, 1, 4, 1, 1])]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        for rows, result in zip(requests, results, strict=True):
            check(rows, result)
        await batcher.close()

    asyncio.run(main())
    assert sum(model.batches) == 18
    assert len(model.batches) < 8  # concurrent requests shared runs


def test_lone_request_runs_at_once_in_its_own_batch() -> None:
    stats: list[BatchStats] = []
    batcher = DynamicBatcher(fake_model, max_batch_size=32, on_batch=stats.append)

    async def main() -> None:
        for i in range(3):
            check(images(2, i), await batcher.submit(images(2, i)))
        await batcher.close()

    asyncio.run(main())
    assert [(s.rows, s.requests) for s in stats] == [(2, 1)] * 3


def test_large_request_is_split_into_chunks_and_joined() -> None:
    model = SlowModel(0.0)
    batcher = DynamicBatcher(model, max_batch_size=8)

    async def main() -> Outputs:
        result = await batcher.submit(images(30, 0))
        await batcher.close()
        return result

    check(images(30, 0), asyncio.run(main()))
    assert model.batches == [8, 8, 8, 6]


def test_delay_waits_for_company() -> None:
    model = SlowModel(0.0)
    batcher = DynamicBatcher(model, max_batch_size=16, max_batch_delay_ms=300)

    async def main() -> None:
        first = asyncio.create_task(batcher.submit(images(1, 0)))
        await asyncio.sleep(0.01)
        second = asyncio.create_task(batcher.submit(images(2, 5)))
        check(images(1, 0), await first)
        check(images(2, 5), await second)
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [3]


def test_full_queue_answers_overloaded_at_once() -> None:
    model = SlowModel(0.2)
    batcher = DynamicBatcher(model, max_batch_size=4, max_queue_rows=8)

    async def main() -> None:
        running = asyncio.create_task(batcher.submit(images(4, 0)))
        await asyncio.to_thread(model.started.wait, 5)  # the first batch is in the model now
        queued = [asyncio.create_task(batcher.submit(images(4, i))) for i in (1, 2)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded, match="queue is full"):
            await batcher.submit(images(1, 9))
        for task, tag in zip([running, *queued], (0, 1, 2), strict=True):
            check(images(4, tag), await task)
        check(images(1, 9), await batcher.submit(images(1, 9)))  # recovered
        await batcher.close()

    asyncio.run(main())


def test_failed_run_fails_its_batch_and_the_batcher_goes_on() -> None:
    model = SlowModel(0.0)
    model.fail_next = True
    batcher = DynamicBatcher(model)

    async def main() -> None:
        with pytest.raises(RuntimeError, match="blew up"):
            await batcher.submit(images(2, 0))
        check(images(3, 1), await batcher.submit(images(3, 1)))
        await batcher.close()

    asyncio.run(main())


def test_cancelled_request_does_not_break_the_others() -> None:
    model = SlowModel(0.1)
    batcher = DynamicBatcher(model, max_batch_size=64)

    async def main() -> None:
        blocker = asyncio.create_task(batcher.submit(images(1, 0)))
        await asyncio.to_thread(model.started.wait, 5)
        leaving = asyncio.create_task(batcher.submit(images(2, 1)))
        staying = asyncio.create_task(batcher.submit(images(3, 2)))
        await asyncio.sleep(0)
        leaving.cancel()
        check(images(1, 0), await blocker)
        check(images(3, 2), await staying)
        assert leaving.cancelled()
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [1, 3]  # the cancelled rows never ran


def test_close_finishes_queued_requests_and_refuses_new_ones() -> None:
    model = SlowModel(0.05)
    batcher = DynamicBatcher(model, max_batch_size=2)

    async def main() -> None:
        tasks = [asyncio.create_task(batcher.submit(images(2, i))) for i in range(3)]
        await asyncio.sleep(0)
        await batcher.close()
        for i, task in enumerate(tasks):
            check(images(2, i), await task)
        with pytest.raises(Overloaded):
            await batcher.submit(images(1, 0))

    asyncio.run(main())


@settings(max_examples=25, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12), max_batch=st.integers(1, 32))
def test_every_request_gets_exactly_its_rows(sizes: list[int], max_batch: int) -> None:
    batcher = DynamicBatcher(fake_model, max_batch_size=max_batch, max_queue_rows=10_000)

    async def main() -> None:
        requests = [images(n, 7 * i) for i, n in enumerate(sizes)]
        results = await asyncio.gather(*(batcher.submit(r) for r in requests))
        for rows, result in zip(requests, results, strict=True):
            check(rows, result)
        await batcher.close()

    asyncio.run(main())


def test_a_run_tells_of_its_tagged_requests_once_with_their_rows() -> None:
    """``on_answered``: one call per run, with each tagged request's rows in the run's outputs
    (the prediction log keeps a run once, not an object per request); untagged ones left out."""
    told: list[tuple[Tagged, Outputs, Rows]] = []
    model = SlowModel()
    batcher = DynamicBatcher(model, on_answered=lambda t, o, r: told.append((t, o, r)))
    sizes, tags = [2, 1, 3, 1], ["a", None, "c", "d"]
    requests = [images(n, tag=10 * i) for i, n in enumerate(sizes)]

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(images(1, 200), tag="alone"))
        await asyncio.to_thread(model.started.wait)  # the rest queue while it runs
        await asyncio.gather(
            *(batcher.submit(r, tag=t) for r, t in zip(requests, tags, strict=True))
        )
        await first
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [1, 7]
    assert [t for t, _, _ in told] == [[("alone", 0, 1)], [("a", 0, 2), ("c", 3, 6), ("d", 6, 7)]]
    _, outputs, rows = told[1]
    np.testing.assert_array_equal(rows, np.concatenate(requests))
    for (_, start, end), request in zip(told[1][0], [requests[0], *requests[2:]], strict=True):
        np.testing.assert_array_equal(outputs["first"][start:end], request[:, 0, 0, 0])


def test_a_run_without_tags_tells_nobody_and_a_failed_batch_tells_each_survivor() -> None:
    told: list[Tagged] = []
    model = SlowModel()

    def shared_run_fails(rows: np.ndarray) -> Outputs:
        if len(rows) == 3:  # the run "x" and the other request share; each alone succeeds
            raise RuntimeError("the graph blew up")
        return model(rows)

    batcher = DynamicBatcher(shared_run_fails, on_answered=lambda t, o, r: told.append(t))

    async def main() -> None:
        blocker = asyncio.ensure_future(batcher.submit(images(1, 1)))  # untagged
        await asyncio.to_thread(model.started.wait)
        x, other = await asyncio.gather(
            batcher.submit(images(1, 2), tag="x"), batcher.submit(images(2, 3))
        )
        check(images(1, 2), x)
        check(images(2, 3), other)
        await blocker
        await batcher.close()

    asyncio.run(main())
    assert model.batches == [1, 1, 2]
    assert told == [[("x", 0, 1)]]


def test_a_run_tells_before_it_answers() -> None:
    """A client may act on its answer at once (label it by its id): by the time a request has
    its answer, the observer has heard of it, however long the observer takes."""
    told: list[Tagged] = []

    def slow_observer(tagged: Tagged, outputs: Outputs, rows: Rows) -> None:
        time.sleep(0.05)
        told.append(tagged)

    batcher = DynamicBatcher(fake_model, on_answered=slow_observer)

    async def main() -> list[int]:
        seen = []
        for n in range(3):
            await batcher.submit(images(1, n), tag=n)
            seen.append(len(told))
        await batcher.close()
        return seen

    assert asyncio.run(main()) == [1, 2, 3]


def test_undecoded_requests_are_made_on_the_thread_just_before_their_run() -> None:
    """Requests queued behind a run with ``make`` instead of rows: the thread makes each one's
    rows (and tag) before the next run, which takes them all; one whose ``make`` raises gets
    that error and never counts as an inference or a failure."""
    model = SlowModel(seconds=0.2)
    told: list[Tagged] = []
    batcher = DynamicBatcher(model, max_batch_size=64, on_answered=lambda t, o, r: told.append(t))
    made_on: list[str] = []

    def maker(rows: np.ndarray | None, tag: str) -> Callable[[], tuple[Rows, str]]:
        def make() -> tuple[Rows, str]:
            made_on.append(threading.current_thread().name)
            if rows is None:
                raise Overloaded("this body did not decode")
            return rows, tag

        return make

    async def main() -> None:
        first = asyncio.ensure_future(batcher.submit(images(1, tag=0)))
        assert await asyncio.to_thread(model.started.wait, 10)
        queued = [images(2, tag=10), None, images(3, tag=20)]
        results = await asyncio.gather(
            *(batcher.submit(None, make=maker(r, f"t{i}")) for i, r in enumerate(queued)),
            return_exceptions=True,
        )
        check(images(1, tag=0), await first)
        two, failed, three = results
        assert isinstance(failed, Overloaded) and "did not decode" in str(failed)
        assert isinstance(two, dict) and isinstance(three, dict)
        check(images(2, tag=10), two)
        check(images(3, tag=20), three)

    asyncio.run(main())
    batcher.stop()
    assert made_on == ["batcher"] * 3
    assert model.batches == [1, 5]  # the made requests ran together, the failed one not at all
    assert told == [[("t0", 0, 2), ("t2", 2, 5)]]
    stats = batcher.statistics.snapshot("m", 1)
    assert stats.inference_count == 6 and not any(stats.failures.values())
