"""The data plane's background threads: once it has started, the event loop's default executor
(model loads, repository polls) runs under THREAD_SCHEDULING, and so does every thread it started
meanwhile: onnxruntime's pool threads (made by the thread that made the session) and the pools'."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from service.dataplane.dataplane import DataPlane
from service.engine.thread_policy import ThreadScheduling
from tests.support.apps import make_settings
from tests.support.models import make_model_repo


def policies_of_new_threads(before: set[int]) -> dict[int, int]:
    """The scheduling policy of each of this process's threads not in ``before``."""
    now = {int(tid) for tid in os.listdir("/proc/self/task")}
    return {tid: os.sched_getscheduler(tid) for tid in now - before}


@pytest.mark.parametrize(
    ("scheduling", "policy"), [("batch", os.SCHED_BATCH), ("normal", os.SCHED_OTHER)]
)
def test_loads_and_onnxruntimes_pool_threads_are_scheduled_as_configured(
    tmp_path: Path, scheduling: ThreadScheduling, policy: int
) -> None:
    settings = make_settings(
        make_model_repo(tmp_path), intra_op_threads=2, thread_scheduling=scheduling
    )
    plane = DataPlane(settings)
    before = {int(tid) for tid in os.listdir("/proc/self/task")}

    async def main() -> tuple[int, dict[int, int]]:
        await plane.start()
        try:
            loader = await asyncio.to_thread(os.sched_getscheduler, 0)
            return loader, policies_of_new_threads(before)
        finally:
            await plane.stop()

    loader, started = asyncio.run(main())
    assert loader == policy
    # the executor's thread and each session's second intra-op thread, at least
    assert len(started) >= 2
    assert set(started.values()) == {policy}
