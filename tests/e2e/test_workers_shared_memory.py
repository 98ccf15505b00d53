"""End to end: Triton's system shared memory with ``python -m service --workers 2``, driven by
tritonclient and ``tritonclient.utils.shared_memory``. A region registered through one connection
serves inference in every worker (each worker's statistics snapshot shows it answered), every
worker lists it, and once unregistered every worker refuses requests naming it; REST and gRPC
alike, and a worker restarted after a kill -9 holds the registration before it serves."""

from __future__ import annotations

import json
import os
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from tests.support.models import tiny_reference
from tests.support.servers import ServerProcess, wait_until
from tests.support.workers import serving, two_workers, workers

pytestmark = pytest.mark.slow  # two server processes start (and one restarts) per test

MODEL, INPUT, OUTPUT = "tiny", "images", "probabilities"
IMAGES = np.random.default_rng(5).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
OUT_BYTES = len(IMAGES) * 10 * 4
Client = Callable[[], Any]  # a new tritonclient (a new connection each time)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[ServerProcess, Path]]:
    folder = tmp_path / "workers"  # known, to read each worker's statistics snapshot
    with two_workers(tmp_path, WORKERS_DIR=str(folder)) as running:
        yield running, folder


@pytest.fixture
def regions() -> Iterator[tuple[Any, Any]]:
    """An input region holding IMAGES and an output region for their probabilities."""
    handles = []
    for size in (IMAGES.nbytes, OUT_BYTES):
        name = f"w{uuid.uuid4().hex[:12]}"
        handles.append(shm.create_shared_memory_region(name, f"/{name}", size))
    shm.set_shared_memory_region(handles[0], [IMAGES])
    yield handles[0], handles[1]
    for handle in handles:
        shm.destroy_shared_memory_region(handle)


def name_of(handle: Any) -> str:
    return str(handle._triton_shm_name)


def clients(server: ServerProcess) -> dict[str, tuple[Any, Client]]:
    """Each protocol's tritonclient module and a maker of new clients."""
    return {
        "rest": (triton_http, lambda: triton_http.InferenceServerClient(server.address)),
        "grpc": (triton_grpc, lambda: triton_grpc.InferenceServerClient(server.grpc_url)),
    }


def plain_answer(server: ServerProcess, folder: Path) -> np.ndarray:
    """The answer to IMAGES as a plain binary request (the tiny graph's, as numpy computes it),
    once the answering worker's snapshot counts it: the figures each test starts from."""
    client = triton_http.InferenceServerClient(server.address)
    try:
        tensor = triton_http.InferInput(INPUT, list(IMAGES.shape), "UINT8")
        tensor.set_data_from_numpy(IMAGES, binary_data=True)
        answer: np.ndarray = client.infer(MODEL, [tensor]).as_numpy(OUTPUT)
    finally:
        client.close()
    np.testing.assert_allclose(answer, tiny_reference(IMAGES), atol=1e-5)

    def counted() -> int:
        return sum(answered_by(folder).values())

    wait_until(lambda: counted() == len(IMAGES), 10, lambda: f"{counted()} counted")
    return answer


def infer_in_regions(protocol: Any, new_client: Client, inputs: Any, outputs: Any) -> np.ndarray:
    """One infer over a new connection, its input read from ``inputs`` and its output written
    to ``outputs``; what the output region then holds (cleared before)."""
    shm.set_shared_memory_region(outputs, [np.zeros(len(IMAGES) * 10, np.float32)])
    tensor = protocol.InferInput(INPUT, list(IMAGES.shape), "UINT8")
    tensor.set_shared_memory(name_of(inputs), IMAGES.nbytes)
    wanted = protocol.InferRequestedOutput(OUTPUT)
    wanted.set_shared_memory(name_of(outputs), OUT_BYTES)
    client = new_client()
    try:
        client.infer(MODEL, [tensor], outputs=[wanted])
    finally:
        client.close()
    got: np.ndarray = shm.get_contents_as_numpy(outputs, np.float32, [len(IMAGES), 10])
    return got


def answered_by(folder: Path) -> dict[int, int]:
    """Inferences of ``tiny`` each worker has answered, from its statistics snapshot (at most a
    second old)."""
    found = {}
    for path in (folder / "statistics").glob("*.json"):
        if not path.stem.isdigit():  # a snapshot being written (renamed into place)
            continue
        try:
            rows = json.loads(path.read_text())
        except (FileNotFoundError, ValueError):
            continue
        found[int(path.stem)] = sum(r["inference_count"] for r in rows if r["name"] == MODEL)
    return found


def every_worker_answers_correctly(
    server: ServerProcess, folder: Path, call: Callable[[], np.ndarray], expected: np.ndarray
) -> int:
    """Send ``call`` over new connections until every live worker has answered at least one
    (their snapshots are up to a second old), each answer checked; how many were sent."""
    before = answered_by(folder)
    sent = []

    def each_answered() -> bool:
        np.testing.assert_allclose(call(), expected, atol=1e-6)
        sent.append(1)
        now = answered_by(folder)
        return all(now.get(pid, 0) > before.get(pid, 0) for pid in workers(server))

    wait_until(each_answered, 60, lambda: f"not every worker answered: {answered_by(folder)}")
    return len(sent)


def statuses(protocol: str, new_client: Client, count: int) -> list[list[tuple[str, str, int]]]:
    """The region list from ``count`` new connections: (name, key, byte_size) each."""
    found = []
    for _ in range(count):
        client = new_client()
        try:
            answer = client.get_system_shared_memory_status()
        finally:
            client.close()
        if protocol == "rest":
            found.append([(r["name"], r["key"], int(r["byte_size"])) for r in answer])
        else:
            regions = answer.regions.values()
            found.append([(r.name, r.key, r.byte_size) for r in regions])
    return [sorted(each) for each in found]


def both_listed(inputs: Any, outputs: Any) -> list[tuple[str, str, int]]:
    return sorted(
        [
            (name_of(inputs), f"/{name_of(inputs)}", IMAGES.nbytes),
            (name_of(outputs), f"/{name_of(outputs)}", OUT_BYTES),
        ]
    )


def refused_everywhere(protocol: Any, new_client: Client, inputs: Any, outputs: Any) -> None:
    """30 requests naming the unregistered input region: each a 400 (INVALID_ARGUMENT)."""
    for _ in range(30):
        with pytest.raises(InferenceServerException) as caught:
            infer_in_regions(protocol, new_client, inputs, outputs)
        assert f"no shared memory region {name_of(inputs)!r}" in str(caught.value)
        assert caught.value.status() in ("400", "StatusCode.INVALID_ARGUMENT")


@pytest.mark.parametrize("protocol_name", ["rest", "grpc"])
def test_a_region_registered_through_one_connection_serves_every_worker_until_unregistered(
    server: tuple[ServerProcess, Path], regions: tuple[Any, Any], protocol_name: str
) -> None:
    running, folder = server
    inputs, outputs = regions
    protocol, new_client = clients(running)[protocol_name]
    expected = plain_answer(running, folder)
    client = new_client()
    try:
        client.register_system_shared_memory(name_of(inputs), f"/{name_of(inputs)}", IMAGES.nbytes)
        client.register_system_shared_memory(name_of(outputs), f"/{name_of(outputs)}", OUT_BYTES)
    finally:
        client.close()

    def call() -> np.ndarray:
        return infer_in_regions(protocol, new_client, inputs, outputs)

    assert every_worker_answers_correctly(running, folder, call, expected) >= 2
    listed = both_listed(inputs, outputs)
    assert statuses(protocol_name, new_client, 20) == [listed] * 20

    client = new_client()
    try:
        client.unregister_system_shared_memory(name_of(inputs))
    finally:
        client.close()
    refused_everywhere(protocol, new_client, inputs, outputs)
    left = [(name_of(outputs), f"/{name_of(outputs)}", OUT_BYTES)]
    assert statuses(protocol_name, new_client, 20) == [left] * 20


def test_a_worker_restarted_after_a_kill_holds_the_registrations_before_it_serves(
    server: tuple[ServerProcess, Path], regions: tuple[Any, Any]
) -> None:
    running, folder = server
    inputs, outputs = regions
    expected = plain_answer(running, folder)
    protocol, new_client = clients(running)["rest"]
    client = new_client()
    try:
        client.register_system_shared_memory(name_of(inputs), f"/{name_of(inputs)}", IMAGES.nbytes)
        client.register_system_shared_memory(name_of(outputs), f"/{name_of(outputs)}", OUT_BYTES)
    finally:
        client.close()

    killed = workers(running)[0]
    os.kill(killed, signal.SIGKILL)
    wait_until(lambda: len(workers(running)) == 2 and killed not in workers(running), 30, "restart")
    wait_until(lambda: all(serving(running, pid) for pid in workers(running)), 60, "new one ready")

    def call() -> np.ndarray:
        return infer_in_regions(protocol, new_client, inputs, outputs)

    every_worker_answers_correctly(running, folder, call, expected)  # the new worker among them
    listed = both_listed(inputs, outputs)
    assert statuses("grpc", clients(running)["grpc"][1], 20) == [listed] * 20
