"""The worker group's shared folder, in one process: a worker that starts applies what the group
recorded, a live worker that never acknowledges is named in the answer, a dead one is not waited
for, and statistics of one version add up across workers; WORKERS=auto's count."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest

from service.core.errors import ModelLoadFailed, ModelNotFound, WorkersPending
from service.core.processes import MEMORY_PER_WORKER, alive, auto_workers, sibling
from service.core.version_policy import VersionPolicy
from service.dataplane.config_override import ConfigOverride, override_options
from service.dataplane.workers import WorkerGroup
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from service.engine.statistics import (
    BatchSizeStatistics,
    Duration,
    VersionStatistics,
    statistics_from_dict,
    summed_statistics,
)
from service.engine.version_folder import ModelState
from service.settings import Settings
from tests.support.models import make_model_repo

CPU_ONLY = RuntimeOptions(providers=("CPUExecutionProvider",), warm_up=False)


def repository(root: Path) -> ModelRepository:
    found = ModelRepository(root, CPU_ONLY, VersionPolicy.parse("latest"))
    found.load()
    return found


def states(found: ModelRepository, name: str) -> set[str]:
    return {entry.state.value for entry in found.versions(name)}


def test_a_starting_worker_applies_the_calls_the_group_took(tmp_path: Path) -> None:
    root = make_model_repo(tmp_path, {"tiny": [1], "other": [1]}, lecture=False)
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"not a graph")
    first, second = repository(root), repository(root)

    async def scenario() -> None:
        group = WorkerGroup(tmp_path / "workers", first)
        await group.start()
        await group.change("unload", "tiny", lambda: asyncio.to_thread(first.unload_model, "tiny"))
        await WorkerGroup(tmp_path / "workers", second).start()  # as a restarted worker does
        recorded = group.control.read_text()
        for change in ("load", "unload"):
            with pytest.raises(ModelNotFound):
                await group.change(change, "nope", lambda: asyncio.sleep(0))  # type: ignore[arg-type]
        assert group.control.read_text() == recorded  # a 404 is recorded nowhere
        with pytest.raises(ModelLoadFailed):  # the answer, after every worker tried too
            await group.change(
                "load", "broken", lambda: asyncio.to_thread(first.load_model, "broken")
            )

    try:
        asyncio.run(scenario())
        assert states(first, "tiny") == states(second, "tiny") == {ModelState.UNLOADED.value}
        assert states(second, "other") == {ModelState.READY.value}
    finally:
        first.close()
        second.close()


def test_a_live_worker_that_never_applies_a_call_is_named_and_a_dead_one_is_not_awaited(
    tmp_path: Path,
) -> None:
    found = repository(make_model_repo(tmp_path, {"tiny": [1]}, lecture=False))
    late = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    group = WorkerGroup(tmp_path / "workers", found, sync_timeout_s=0.3, member=alive)

    async def unload() -> None:
        await asyncio.to_thread(found.unload_model, "tiny")

    async def scenario() -> None:
        await group.start()
        (group.acks / str(late.pid)).write_text('{"generation": 0}')  # has applied nothing
        with pytest.raises(WorkersPending, match=f"pending in worker\\(s\\) {late.pid} "):
            await group.change("unload", "tiny", unload)
        assert states(found, "tiny") == {ModelState.UNLOADED.value}  # done here all the same
        late.kill()
        late.wait()
        await group.change("load", "tiny", lambda: asyncio.to_thread(found.load_model, "tiny"))

    try:
        asyncio.run(scenario())
        assert states(found, "tiny") == {ModelState.READY.value}
        assert not (group.acks / str(late.pid)).exists()
    finally:
        late.kill()
        late.wait()
        found.close()


def test_a_starting_worker_removes_the_acks_of_dead_workers(tmp_path: Path) -> None:
    """Else only a repository call did: 50 crashes left 52 acks (the eleventh audit)."""
    found = repository(make_model_repo(tmp_path, {"tiny": [1]}, lecture=False))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    group = WorkerGroup(tmp_path / "workers", found, member=alive)
    group.acks.mkdir(parents=True)
    (group.acks / str(dead.pid)).write_text('{"generation": 0}')
    try:
        asyncio.run(group.start())
        assert not (group.acks / str(dead.pid)).exists()
    finally:
        found.close()


def test_statistics_of_one_version_add_up_across_workers() -> None:
    def part(count: int, ns: int, last_ms: int, batch: int) -> VersionStatistics:
        d = Duration(count, ns)
        return VersionStatistics(
            "tiny", "1", last_ms, count, count, {"success": d, "queue": d},
            [BatchSizeStatistics(batch, d, d, d)], {"REJECTED": count, "BACKEND": 1}, batch,
        )  # fmt: skip

    total = summed_statistics([part(2, 10, 5, 1), part(3, 20, 9, 1), part(1, 7, 3, 4)])
    assert (total.inference_count, total.execution_count, total.last_inference_ms) == (6, 6, 9)
    assert total.durations["success"] == Duration(6, 37)
    assert total.failures == {"REJECTED": 6, "BACKEND": 3} and total.pending == 6
    assert [(b.batch_size, b.compute_infer) for b in total.batch_stats] == [
        (1, Duration(5, 30)),
        (4, Duration(1, 7)),
    ]
    assert statistics_from_dict(asdict(total)) == total
    older = {k: v for k, v in asdict(total).items() if k not in {"failures", "pending"}}
    assert statistics_from_dict(older).failures == {}  # a worker of the release before


def test_auto_workers_takes_one_per_core_as_memory_allows(tmp_path: Path) -> None:
    root = make_model_repo(tmp_path, {"tiny": [1, 2]}, lecture=False)
    assert auto_workers(root, cores=8, memory=2**40) == 8
    assert auto_workers(root, cores=8, memory=3 * MEMORY_PER_WORKER) == 2  # memory bounds it
    assert auto_workers(root, cores=8, memory=0) == 1
    assert auto_workers(tmp_path / "none", cores=3, memory=2**40) == 3
    assert Settings(model_repository=root, workers="auto").workers >= 1  # type: ignore[arg-type]


def test_a_worker_is_a_sibling_and_a_stranger_with_a_reused_pid_is_not() -> None:
    """Two children of this process are siblings; this process (their parent) is not one."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    code = (
        "import os, sys\n"
        "from service.core.processes import sibling\n"
        "print(sibling(int(sys.argv[1])), sibling(os.getppid()))\n"
    )
    try:
        out = subprocess.run(
            [sys.executable, "-c", code, str(other.pid)],
            capture_output=True, text=True, check=True, timeout=60,
        ).stdout.split()  # fmt: skip
    finally:
        other.kill()
        other.wait()
    assert out == ["True", "False"]
    assert not sibling(other.pid)  # gone


def test_a_load_override_reaches_every_worker_and_a_plain_load_takes_it_back(
    tmp_path: Path,
) -> None:
    root = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    first, second = repository(root), repository(root)
    override = ConfigOverride(max_batch_size=8, dynamic_batching=True, preferred_batch_size=(2, 4))
    options = override_options("tiny", override, CPU_ONLY)

    async def scenario() -> None:
        group = WorkerGroup(tmp_path / "workers", first)
        await group.start()

        async def load_here(with_options: RuntimeOptions | None) -> None:
            await asyncio.to_thread(first.load_model, "tiny", with_options)

        await group.change("load", "tiny", lambda: load_here(options), override)
        await WorkerGroup(tmp_path / "workers", second).start()  # as a restarted worker does
        assert second.get("tiny").options == options
        assert (options.max_batch_size, options.max_images_per_request) == (4, 8)
        await group.change("load", "tiny", lambda: load_here(None))
        await WorkerGroup(tmp_path / "workers", second).start()
        assert second.get("tiny").options == CPU_ONLY

    try:
        asyncio.run(scenario())
    finally:
        first.close()
        second.close()
