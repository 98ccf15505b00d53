"""System shared memory regions through the worker group's control file, in one process (each
group stands for a worker, with a pid of its own): a register or unregister taken by one worker
holds in the others before it returns, a refused one is recorded nowhere, a region whose object
vanished before another worker opened it is registered nowhere, and a worker that starts late
lists every region (one it cannot open is listed and refused when a request names it)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from service.core.errors import InvalidInput
from service.core.version_policy import VersionPolicy
from service.dataplane.shared_memory import SharedMemoryRegistry
from service.dataplane.types import SharedMemoryRef
from service.dataplane.workers import WorkerGroup
from service.engine.repository import ModelRepository
from service.engine.runtime import RuntimeOptions
from tests.support.models import make_model_repo

FIRST_PID, SECOND_PID, LATE_PID = 900001, 900002, 900003


@pytest.fixture
def shm_object() -> Iterator[Path]:
    path = Path("/dev/shm") / f"t{uuid.uuid4().hex[:12]}"
    path.write_bytes(bytes(range(256)))
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def models(tmp_path: Path) -> Iterator[ModelRepository]:
    root = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    options = RuntimeOptions(providers=("CPUExecutionProvider",), warm_up=False)
    found = ModelRepository(root, options, VersionPolicy.parse("latest"))
    found.load()
    yield found
    found.close()


def worker(
    folder: Path, models: ModelRepository, pid: int, max_regions: int = 4
) -> tuple[WorkerGroup, SharedMemoryRegistry]:
    """A worker of the group in ``folder``: its group (as pid ``pid``) and its registry."""
    registry = SharedMemoryRegistry(max_regions, inline_bytes=0, max_read_bytes=1 << 20)
    live = {FIRST_PID, SECOND_PID, LATE_PID}
    group = WorkerGroup(
        folder, models, sync_timeout_s=5, member=live.__contains__, regions=registry
    )
    group.pid = pid
    return group, registry


def listed(registry: SharedMemoryRegistry) -> list[tuple[str, str, int, int]]:
    return [(r.name, r.key, r.offset, r.byte_size) for r in registry.status()]


def recorded_regions(group: WorkerGroup) -> dict[str, object]:
    """The regions control.json holds ({} before any call)."""
    if not group.control.exists():
        return {}
    found: dict[str, object] = json.loads(group.control.read_text())["regions"]
    return found


def first_bytes(registry: SharedMemoryRegistry, name: str) -> list[int]:
    return registry.read(SharedMemoryRef(name, 4), "UINT8", [4], "input").tolist()  # type: ignore[no-any-return]


def two_workers(
    folder: Path,
    models: ModelRepository,
    scenario: Callable[..., Awaitable[None]],
    max_regions: int = 4,
) -> None:
    """Run ``scenario(first, first_registry, second, second_registry)`` with both watching the
    control file, as live workers do."""

    async def run() -> None:
        first, first_regions = worker(folder, models, FIRST_PID, max_regions)
        second, second_regions = worker(folder, models, SECOND_PID, max_regions)
        await first.start()
        await second.start()
        watching = [asyncio.create_task(g.watch()) for g in (first, second)]
        try:
            await scenario(first, first_regions, second, second_regions)
        finally:
            for task in watching:
                task.cancel()
            first_regions.close()
            second_regions.close()

    asyncio.run(run())


def test_a_register_and_unregister_taken_by_one_worker_hold_in_every_worker(
    tmp_path: Path, models: ModelRepository, shm_object: Path
) -> None:
    key = f"/{shm_object.name}"

    async def scenario(
        first: WorkerGroup,
        first_regions: SharedMemoryRegistry,
        second: WorkerGroup,
        second_regions: SharedMemoryRegistry,
    ) -> None:
        await first.register_region("in", key, 8, 16)
        await first.register_region("out", key, 0, 4)
        # Returned only once the other worker opened them too: the same list, the same bytes.
        assert listed(second_regions) == listed(first_regions)
        assert listed(first_regions) == [("in", key, 8, 16), ("out", key, 0, 4)]
        assert (
            first_bytes(second_regions, "in") == first_bytes(first_regions, "in") == [8, 9, 10, 11]
        )
        second_regions.write(SharedMemoryRef("out", 4), np.full(4, 7, np.uint8), "output")
        assert first_bytes(first_regions, "out") == [7, 7, 7, 7]

        late, late_regions = worker(tmp_path / "workers", models, LATE_PID)
        await late.start()  # as a restarted worker does, before serving
        assert listed(late_regions) == listed(first_regions)
        late.close()  # it leaves the group: no one waits for it
        late_regions.close()

        await second.unregister_region("in")
        for registry in (first_regions, second_regions):
            assert [r.name for r in registry.status()] == ["out"]
            with pytest.raises(InvalidInput, match="no shared memory region 'in'"):
                first_bytes(registry, "in")
        await second.unregister_region("never registered")  # no error (Triton)
        await first.unregister_region(None)
        assert second_regions.status() == first_regions.status() == []

    two_workers(tmp_path / "workers", models, scenario)


def test_a_refused_register_is_recorded_nowhere(
    tmp_path: Path, models: ModelRepository, shm_object: Path
) -> None:
    key = f"/{shm_object.name}"

    async def scenario(
        first: WorkerGroup,
        first_regions: SharedMemoryRegistry,
        second: WorkerGroup,
        second_regions: SharedMemoryRegistry,
    ) -> None:
        await first.register_region("r", key, 0, 8)
        recorded = first.control.read_text()
        refusals = [
            (second, ("r", key, 8, 8), "already registered"),  # the name is taken in another
            (second, ("s", "/no-such-object-here", 0, 8), "cannot open shared memory object"),
            (first, ("s", key, 250, 8), "beyond the 256-byte"),
            (second, ("s", "../etc/passwd", 0, 8), "not a shared-memory object name"),
        ]
        for group, call, message in refusals:
            with pytest.raises(InvalidInput, match=message):
                await group.register_region(*call)
        assert first.control.read_text() == recorded
        assert listed(first_regions) == listed(second_regions) == [("r", key, 0, 8)]

    two_workers(tmp_path / "workers", models, scenario)


def test_the_region_count_bounds_the_group(
    tmp_path: Path, models: ModelRepository, shm_object: Path
) -> None:
    key = f"/{shm_object.name}"

    async def scenario(
        first: WorkerGroup,
        first_regions: SharedMemoryRegistry,
        second: WorkerGroup,
        second_regions: SharedMemoryRegistry,
    ) -> None:
        await first.register_region("r", key, 0, 8)
        with pytest.raises(InvalidInput, match="1 shared memory regions are registered"):
            await second.register_region("s", key, 0, 8)
        assert listed(first_regions) == listed(second_regions) == [("r", key, 0, 8)]

    two_workers(tmp_path / "workers", models, scenario, max_regions=1)


def test_a_region_whose_object_vanished_before_another_worker_opened_it_is_registered_nowhere(
    tmp_path: Path, models: ModelRepository, shm_object: Path
) -> None:
    key = f"/{shm_object.name}"

    async def scenario() -> None:
        first, first_regions = worker(tmp_path / "workers", models, FIRST_PID)
        second, second_regions = worker(tmp_path / "workers", models, SECOND_PID)
        await first.start()
        await second.start()
        register = asyncio.create_task(first.register_region("r", key, 0, 8))
        while "r" not in recorded_regions(first):
            await asyncio.sleep(0.01)  # recorded; the other worker has not looked yet
        shm_object.unlink()
        watching = asyncio.create_task(second.watch())
        try:
            with pytest.raises(InvalidInput, match=f"worker {SECOND_PID}: cannot open shared"):
                await register
        finally:
            watching.cancel()
        assert listed(first_regions) == listed(second_regions) == []
        assert recorded_regions(first) == {}

    asyncio.run(scenario())


def test_a_late_worker_lists_a_region_it_cannot_open_and_refuses_requests_naming_it(
    tmp_path: Path, models: ModelRepository, shm_object: Path
) -> None:
    key = f"/{shm_object.name}"

    async def scenario(
        first: WorkerGroup,
        first_regions: SharedMemoryRegistry,
        second: WorkerGroup,
        second_regions: SharedMemoryRegistry,
    ) -> None:
        await first.register_region("r", key, 0, 8)
        shm_object.unlink()  # the client removed its object while it is registered
        late, late_regions = worker(tmp_path / "workers", models, LATE_PID)
        await late.start()
        watching = asyncio.create_task(late.watch())
        try:
            assert listed(late_regions) == listed(first_regions) == [("r", key, 0, 8)]
            with pytest.raises(InvalidInput, match="this worker process cannot open its object"):
                first_bytes(late_regions, "r")
            assert first_bytes(first_regions, "r") == [0, 1, 2, 3]  # its descriptor still reads
            await first.unregister_region("r")
            assert late_regions.status() == second_regions.status() == []
        finally:
            watching.cancel()
            late_regions.close()

    two_workers(tmp_path / "workers", models, scenario)
