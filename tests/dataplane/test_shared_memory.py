"""The shared-memory registry on its own: bounds, keys, objects that are no plain file, a region
unregistered while a copy uses it, and the wire parameters' rules."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from service.core.errors import InvalidInput, PayloadTooLarge, RegionNotFound
from service.dataplane.dataplane import DataPlane
from service.dataplane.shared_memory import SharedMemoryRegistry, shared_memory_ref
from service.dataplane.types import InferRequest, InputTensor, SharedMemoryRef
from service.engine.work_pool import WorkPool
from service.settings import Settings


@pytest.fixture
def shm_object() -> Iterator[Path]:
    path = Path("/dev/shm") / f"t{uuid.uuid4().hex[:12]}"
    path.write_bytes(bytes(range(256)) * 4)  # 1024 bytes
    yield path
    path.unlink(missing_ok=True)


@pytest.fixture
def registry() -> Iterator[SharedMemoryRegistry]:
    made = SharedMemoryRegistry(max_regions=4, inline_bytes=0, max_read_bytes=1 << 20)
    yield made
    made.close()


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_read_and_write_inside_a_region_at_offsets(
    registry: SharedMemoryRegistry, shm_object: Path
) -> None:
    registry.register("r", f"/{shm_object.name}", 256, 512)
    got = registry.read(SharedMemoryRef("r", 8, 4), "UINT8", [2, 4], "input")
    np.testing.assert_array_equal(got.ravel(), np.arange(4, 12, dtype=np.uint8))
    written = registry.write(SharedMemoryRef("r", 64, 16), np.arange(4, dtype=np.float32), "out")
    assert written == 16
    data = shm_object.read_bytes()
    assert np.frombuffer(data[272:288], np.float32).tolist() == [0, 1, 2, 3]
    assert len(data) == 1024


def test_bounds_are_checked_against_the_region_not_the_object(
    registry: SharedMemoryRegistry, shm_object: Path
) -> None:
    registry.register("r", f"/{shm_object.name}", 0, 16)
    with pytest.raises(InvalidInput, match="beyond region"):
        registry.read(SharedMemoryRef("r", 16, 8), "UINT8", [16], "input")  # the object has more
    with pytest.raises(InvalidInput, match="beyond region"):
        registry.write(SharedMemoryRef("r", 16, 1), np.zeros(16, np.uint8), "output")
    with pytest.raises(InvalidInput, match="needs 16"):
        registry.read(SharedMemoryRef("r", 15), "UINT8", [16], "input")


def test_a_fifo_or_a_directory_in_dev_shm_is_not_registered(registry: SharedMemoryRegistry) -> None:
    name = f"t{uuid.uuid4().hex[:12]}"
    os.mkfifo(f"/dev/shm/{name}")
    try:
        before = open_fds()
        with pytest.raises(InvalidInput, match="not a plain"):
            registry.register("f", f"/{name}", 0, 1)  # and it does not block on the FIFO
        assert open_fds() == before
    finally:
        os.unlink(f"/dev/shm/{name}")


def test_unregister_while_a_copy_runs_closes_the_descriptor_after_it(
    registry: SharedMemoryRegistry, shm_object: Path
) -> None:
    before = open_fds()
    registry.register("r", f"/{shm_object.name}", 0, 1024)
    assert open_fds() == before + 1
    with registry._use("r", "test"):  # a copy in flight holds the region
        registry.unregister("r")
        assert open_fds() == before + 1  # not closed under it: its number cannot be reused
        with pytest.raises(RegionNotFound):
            registry.status("r")
        with pytest.raises(InvalidInput, match="no shared memory region"):
            registry.read(SharedMemoryRef("r", 1), "UINT8", [1], "input")
    assert open_fds() == before


def test_close_closes_every_descriptor(shm_object: Path) -> None:
    before = open_fds()
    registry = SharedMemoryRegistry(max_regions=4, inline_bytes=0, max_read_bytes=1 << 20)
    for name in "abc":
        registry.register(name, f"/{shm_object.name}", 0, 8)
    registry.close()
    assert open_fds() == before and registry.status() == []


def test_off_when_max_regions_is_zero(shm_object: Path) -> None:
    with pytest.raises(InvalidInput, match="off"):
        SharedMemoryRegistry(0, 0, 1 << 20).register("r", f"/{shm_object.name}", 0, 8)


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"shared_memory_region": "r", "shared_memory_byte_size": True}, "non-negative"),
        ({"shared_memory_region": "", "shared_memory_byte_size": 1}, "region's name"),
        ({"shared_memory_region": "r" * 300, "shared_memory_byte_size": 1}, "region's name"),
        ({"shared_memory_region": "r", "shared_memory_byte_size": 1.5}, "non-negative"),
        ({"shared_memory_region": None, "shared_memory_byte_size": 1}, "together"),
    ],
)
def test_wire_parameters_are_checked(parameters: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        shared_memory_ref(parameters, "input 'x'")


def test_no_parameters_no_region() -> None:
    assert shared_memory_ref({"binary_data_size": 4}, "input 'x'") is None
    ref = shared_memory_ref({"shared_memory_region": "r", "shared_memory_byte_size": 4}, "x")
    assert ref == SharedMemoryRef("r", 4, 0)
    assert ref.parameters() == {"shared_memory_region": "r", "shared_memory_byte_size": 4}


@pytest.mark.anyio
async def test_a_request_reads_no_more_from_regions_than_a_body_may_hold(shm_object: Path) -> None:
    registry = SharedMemoryRegistry(max_regions=4, inline_bytes=0, max_read_bytes=512)
    registry.register("r", f"/{shm_object.name}", 0, 1024)
    empty = np.empty(0, np.uint8)
    tensor = InputTensor("x", "UINT8", [1024], empty, SharedMemoryRef("r", 1024))
    work = WorkPool(1, 1)
    try:
        with pytest.raises(PayloadTooLarge):
            await registry.read_inputs(InferRequest(None, [tensor]), work)
    finally:
        work.close()
        registry.close()


def test_more_than_one_worker_without_their_folder_turns_shared_memory_off(
    tmp_path: Path, shm_object: Path
) -> None:
    """Without WORKERS_DIR each worker process would keep regions of its own (python -m service
    always makes one: tests/dataplane/test_worker_regions.py)."""
    plane = DataPlane(Settings(model_repository=tmp_path, workers=2))
    try:
        with pytest.raises(InvalidInput, match="WORKERS > 1 without WORKERS_DIR"):
            plane.shared_memory.register("r", f"/{shm_object.name}", 0, 8)
    finally:
        plane.close()
    plane = DataPlane(Settings(model_repository=tmp_path, workers=2, workers_dir=tmp_path / "w"))
    try:
        assert plane.workers is not None and plane.shared_memory.max_regions == 64
    finally:
        plane.close()
