"""A lone request to a quick version runs inline, on the event loop's thread (issue 28): decided
per version at warm-up by timing batch-1 runs, and for a version judged slow, again on the runs
it serves; anything else still goes to the model's thread. The thread that ran a request is the
one that reports its run to ``on_batch``."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from service.core.card import MODEL_FILE
from service.engine.batcher import BatchStats, DynamicBatcher
from service.engine.inline import RUNS, ServedRuns, Verdict, quick_run_p99_s
from service.engine.runtime import ModelRuntime, RuntimeOptions
from tests.support.models import card_for, tiny_graph, tiny_reference

IMAGES = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
# A bound no CPU run of the tiny graph comes near, and one no run can meet.
GENEROUS_US, IMPOSSIBLE_US = 10_000, 1


def warmed_runtime(
    tmp_path: Path,
    inline_run_max_us: int,
    seen: list[str],
    dynamic_batching: bool = True,
    max_batch_delay_ms: float = 0.0,
) -> ModelRuntime:
    """The tiny graph, warmed up under ``inline_run_max_us``; ``seen`` gets the name of the
    thread that ran each request."""

    def observe(name: str, version: int, stats: BatchStats) -> None:
        if stats.rows:
            seen.append(threading.current_thread().name)

    path = tmp_path / MODEL_FILE
    onnx.save(tiny_graph(), str(path))
    options = RuntimeOptions(
        providers=("CPUExecutionProvider",), inline_run_max_us=inline_run_max_us, on_batch=observe
    )
    card = card_for("tiny", 1, path)
    options = replace(
        options, dynamic_batching=dynamic_batching, max_batch_delay_ms=max_batch_delay_ms
    )
    runtime = ModelRuntime(card, path.read_bytes(), options)
    runtime.warm_up()
    return runtime


def test_a_lone_request_to_a_quick_version_runs_on_the_loop_and_is_counted(
    tmp_path: Path,
) -> None:
    seen: list[str] = []
    runtime = warmed_runtime(tmp_path, GENEROUS_US, seen)
    assert runtime.inline_p99_s is not None and runtime.inline_p99_s < GENEROUS_US / 1e6
    assert runtime.acquire()  # the request's own lease, as every adapter takes one
    answer = asyncio.run(runtime.infer(IMAGES[:1], outputs=["probabilities"]))
    runtime.release()
    np.testing.assert_allclose(answer["probabilities"], tiny_reference(IMAGES[:1]), atol=1e-5)
    assert seen == [threading.current_thread().name]  # no hop: the caller's thread ran it
    stats = runtime.statistics.snapshot("tiny", 1)
    assert (stats.inference_count, stats.execution_count) == (1, 1)
    assert stats.durations["success"].count == 1
    assert stats.durations["queue"].count == 1
    assert stats.durations["fail"].count == 0
    runtime.close()


def test_an_inline_runs_statistics_and_metrics_come_on_the_loops_next_turn(
    tmp_path: Path,
) -> None:
    """What a run on the loop records waits until its answer has gone out (the caller's code up
    to its next await, which a server's reply is), and comes before any later request is read
    (the loop's next turn): a statistics request sent after the answer sees the run."""
    seen: list[str] = []
    runtime = warmed_runtime(tmp_path, GENEROUS_US, seen)
    assert runtime.inline_p99_s is not None

    async def request() -> tuple[list[str], int, list[str], int]:
        assert runtime.acquire()
        try:
            await runtime.infer(IMAGES[:1])
        finally:
            runtime.release()
        observed_at_answer = list(seen)
        counted_at_answer = runtime.statistics.snapshot("tiny", 1).inference_count
        await asyncio.sleep(0)  # the loop's next turn: what a later request waits for
        counted = runtime.statistics.snapshot("tiny", 1).inference_count
        return observed_at_answer, counted_at_answer, list(seen), counted

    at_answer, counted_at_answer, after, counted = asyncio.run(request())
    assert (at_answer, counted_at_answer) == ([], 0)
    assert (after, counted) == ([threading.current_thread().name], 1)
    runtime.close()


@pytest.mark.parametrize("dynamic_batching", [True, False], ids=["batched", "one-run-each"])
def test_a_slow_version_a_larger_request_or_company_go_to_the_models_thread(
    tmp_path: Path, dynamic_batching: bool
) -> None:
    loop_thread = threading.current_thread().name
    slow: list[str] = []
    runtime = warmed_runtime(tmp_path, IMPOSSIBLE_US, slow, dynamic_batching=dynamic_batching)
    assert runtime.inline_p99_s is None
    asyncio.run(runtime.infer(IMAGES[:1]))
    assert slow and loop_thread not in slow
    runtime.close()

    quick: list[str] = []
    runtime = warmed_runtime(tmp_path, GENEROUS_US, quick, dynamic_batching=dynamic_batching)
    asyncio.run(runtime.infer(IMAGES[:2]))  # two images: more than was timed at warm-up
    assert runtime.acquire() and runtime.acquire()  # another request holds the version too
    answer = asyncio.run(runtime.infer(IMAGES[:1]))
    np.testing.assert_allclose(answer["probabilities"], tiny_reference(IMAGES[:1]), atol=1e-5)
    assert len(quick) == 2 and loop_thread not in quick
    runtime.release()
    runtime.release()
    runtime.close()


def test_without_a_bound_or_warm_up_or_with_a_batch_delay_nothing_runs_inline(
    tmp_path: Path,
) -> None:
    assert warmed_runtime(tmp_path, 0, []).inline_p99_s is None
    # MAX_BATCH_DELAY_MS asks every request to wait for company, a lone one too
    assert warmed_runtime(tmp_path, GENEROUS_US, [], max_batch_delay_ms=5).inline_p99_s is None
    unbatched = warmed_runtime(tmp_path, GENEROUS_US, [], False, max_batch_delay_ms=5)
    assert unbatched.inline_p99_s is not None  # without batching the delay means nothing
    path = tmp_path / MODEL_FILE
    unwarmed = ModelRuntime(
        card_for("tiny", 1, path), path.read_bytes(), RuntimeOptions(inline_run_max_us=GENEROUS_US)
    )
    assert unwarmed.inline_p99_s is None
    unwarmed.close()


def test_the_batcher_is_idle_only_with_nothing_queued_or_running() -> None:
    release = threading.Event()

    def run_batch(images: np.ndarray) -> dict[str, np.ndarray]:
        release.wait(10)
        return {"y": images}

    batcher = DynamicBatcher(run_batch)

    async def scenario() -> None:
        assert batcher.idle
        running = asyncio.create_task(batcher.submit(IMAGES[:1]))
        await asyncio.sleep(0)
        assert not batcher.idle  # counted in on submit, then held by the thread
        for _ in range(200):
            await asyncio.sleep(0.005)
            assert not batcher.idle  # its run is blocked: still busy
            if batcher.queued_rows == 0:
                break
        release.set()
        await running
        for _ in range(200):
            if batcher.idle:
                break
            await asyncio.sleep(0.005)
        assert batcher.idle
        await batcher.close()

    asyncio.run(scenario())


def test_the_timing_gives_up_once_more_than_one_run_in_a_hundred_is_slow() -> None:
    calls: list[int] = []

    def slow() -> None:
        calls.append(0)
        time.sleep(0.002)

    assert quick_run_p99_s(slow, 0.001) is None
    assert len(calls) == 2  # a slow model costs two runs, not a hundred (nor a series again)
    p99 = quick_run_p99_s(lambda: None, 1.0)
    assert p99 is not None and 0 <= p99 < 1.0


def test_a_series_spoilt_by_two_slow_runs_is_timed_again() -> None:
    """Two runs preempted early in the first series (a busy machine at warm-up) do not make a
    quick model slow for the process' life: the next series decides."""
    calls: list[int] = []

    def preempted_twice() -> None:
        calls.append(0)
        if len(calls) in (3, 7):
            time.sleep(0.002)

    p99 = quick_run_p99_s(preempted_twice, 0.001)
    assert p99 is not None and p99 < 0.001
    assert len(calls) == 7 + 100  # the first series gave up at its second slow run
    calls.clear()
    assert quick_run_p99_s(preempted_twice, 0.001, attempts=1) is None


def test_requests_already_on_the_loop_send_a_lone_one_to_the_batcher_with_them(
    tmp_path: Path,
) -> None:
    """A busy loop keeps batching: each request takes its lease and calls ``infer`` in one go, as
    the REST fast path does, and the loop's one turn lets the second one in before the first runs
    inline, so both go to the model's thread."""
    seen: list[str] = []
    runtime = warmed_runtime(tmp_path, GENEROUS_US, seen)

    async def request(image: np.ndarray) -> dict[str, np.ndarray]:
        assert runtime.acquire()
        try:
            return await runtime.infer(image)
        finally:
            runtime.release()

    async def together() -> list[dict[str, np.ndarray]]:
        return list(await asyncio.gather(request(IMAGES[:1]), request(IMAGES[1:2])))

    answers = asyncio.run(together())
    for n, answer in enumerate(answers):
        expected = tiny_reference(IMAGES[n : n + 1])
        np.testing.assert_allclose(answer["probabilities"], expected, atol=1e-5)
    assert seen and threading.current_thread().name not in seen
    runtime.close()


def lone_requests(runtime: ModelRuntime, count: int) -> None:
    """``count`` 1-image requests one after another, each holding its lease as a server's does."""

    async def one_by_one() -> None:
        for _ in range(count):
            assert runtime.acquire()
            try:
                await runtime.infer(IMAGES[:1])
            finally:
                runtime.release()

    asyncio.run(one_by_one())


def test_a_version_misjudged_slow_at_warm_up_runs_inline_after_a_series_of_served_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A warm-up whose every series was spoilt (a busy host) is corrected by the batch-1 runs
    the version then serves on its thread, a series of ``RUNS`` at a time."""
    monkeypatch.setattr("service.engine.runtime.quick_run_p99_s", lambda *args: None)
    seen: list[str] = []
    runtime = warmed_runtime(tmp_path, GENEROUS_US, seen)
    assert runtime.inline_p99_s is None
    lone_requests(runtime, RUNS - 1)
    assert runtime.inline_p99_s is None and threading.current_thread().name not in seen
    lone_requests(runtime, 1)  # the series' last run
    assert runtime.inline_p99_s is not None and runtime.inline_p99_s < GENEROUS_US / 1e6
    seen.clear()
    lone_requests(runtime, 1)
    assert seen == [threading.current_thread().name]
    runtime.close()


def test_served_runs_are_judged_a_series_at_a_time_with_the_slowest_one_percent_spared() -> None:
    served = ServedRuns(bound_s=1.0, runs=200)
    verdicts = [served.add(0.5) for _ in range(198)] + [served.add(2.0), served.add(3.0)]
    assert verdicts[:-1] == [None] * 199
    assert verdicts[-1] == Verdict(0.5)  # two of 200 over the bound: the slowest 1%, spared
    verdicts = [served.add(0.5) for _ in range(197)] + [served.add(2.0) for _ in range(3)]
    assert verdicts[-1] == Verdict(None)
