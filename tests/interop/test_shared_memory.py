"""Triton's system shared memory extension driven by tritonclient (HTTP and gRPC) and its own
``tritonclient.utils.shared_memory``, against a real server: an infer whose inputs and outputs lie
in registered regions answers what the binary extension answers, and every hostile key, offset
and size is a clear 400 / INVALID_ARGUMENT after which the server keeps serving.

Registration takes the repository API's rule: these servers admit loopback (ADMIN_LOOPBACK).
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from tritonclient.utils import InferenceServerException

from service.settings import Settings
from tests.support.interop import MODEL, lecture_repository
from tests.support.servers import Running, running_server

OUTPUT = "probabilities"
ATOL = 1e-5


@pytest.fixture(scope="module")
def admin_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = lecture_repository(tmp_path_factory.mktemp("shm"))
    settings = Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        admin_loopback=True,
        shared_memory_regions=8,
        allowed_hosts=["*"],  # as a server on 0.0.0.0 answers any name
    )
    with running_server(settings) as running:
        yield running


@pytest.fixture
def http(admin_server: Running) -> Iterator[Any]:
    client = triton_http.InferenceServerClient(admin_server.address)
    yield client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def grpc_client(admin_server: Running) -> Iterator[Any]:
    client = triton_grpc.InferenceServerClient(admin_server.grpc_url)
    yield client
    client.unregister_system_shared_memory()
    client.close()


@pytest.fixture
def region() -> Iterator[Callable[[int], Any]]:
    """Makes shared-memory objects of a size (unique keys), destroyed after the test."""
    made: list[Any] = []

    def make(byte_size: int) -> Any:
        name = f"t{uuid.uuid4().hex[:12]}"
        handle = shm.create_shared_memory_region(name, f"/{name}", byte_size)
        made.append(handle)
        return handle

    yield make
    for handle in made:
        shm.destroy_shared_memory_region(handle)


def key_of(handle: Any) -> str:
    return str(handle._shm_key)


def name_of(handle: Any) -> str:
    return str(handle._triton_shm_name)


def binary_answer(http: Any, pixels: np.ndarray) -> np.ndarray:
    tensor = triton_http.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=True)
    wanted = [triton_http.InferRequestedOutput(OUTPUT, binary_data=True)]
    answer: np.ndarray = http.infer(MODEL, [tensor], outputs=wanted).as_numpy(OUTPUT)
    return answer


def still_serving(http: Any, pixels: np.ndarray, expected: np.ndarray) -> None:
    assert http.is_server_live() and http.is_server_ready()
    np.testing.assert_allclose(binary_answer(http, pixels[:2]), expected[:2], atol=ATOL)


def registered(client: Any, pixels: np.ndarray, region: Callable[[int], Any]) -> tuple[Any, Any]:
    """An input region holding ``pixels`` and an output region for their probabilities, both
    registered with ``client`` (HTTP or gRPC: the same call)."""
    inputs, outputs = region(pixels.nbytes), region(len(pixels) * 10 * 4)
    shm.set_shared_memory_region(inputs, [pixels])
    for handle, size in ((inputs, pixels.nbytes), (outputs, len(pixels) * 40)):
        client.register_system_shared_memory(name_of(handle), key_of(handle), size)
    return inputs, outputs


# --- the calls, and infer in regions ------------------------------------------------------------


def test_tritonclient_http_shared_memory_infer_equals_binary(
    http: Any, pixels: np.ndarray, expected: np.ndarray, region: Callable[[int], Any]
) -> None:
    inputs, outputs = registered(http, pixels, region)
    status = {r["name"]: r for r in http.get_system_shared_memory_status()}
    assert status[name_of(inputs)] == {
        "name": name_of(inputs),
        "key": key_of(inputs),
        "offset": 0,
        "byte_size": pixels.nbytes,
    }
    assert http.get_system_shared_memory_status(name_of(outputs))[0]["byte_size"] == 800
    tensor = triton_http.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_shared_memory(name_of(inputs), pixels.nbytes)
    wanted = triton_http.InferRequestedOutput(OUTPUT, binary_data=True)
    wanted.set_shared_memory(name_of(outputs), len(pixels) * 40)
    result = http.infer(MODEL, [tensor], outputs=[wanted])
    answer = result.get_output(OUTPUT)
    assert "data" not in answer and answer["shape"] == [len(pixels), 10]
    assert answer["parameters"] == {
        "shared_memory_region": name_of(outputs),
        "shared_memory_byte_size": len(pixels) * 40,
    }
    got = shm.get_contents_as_numpy(outputs, np.float32, answer["shape"])
    np.testing.assert_array_equal(got, binary_answer(http, pixels))
    np.testing.assert_allclose(got, expected, atol=ATOL)
    http.unregister_system_shared_memory(name_of(inputs))
    assert [r["name"] for r in http.get_system_shared_memory_status()] == [name_of(outputs)]


def test_tritonclient_grpc_shared_memory_infer_equals_binary(
    grpc_client: Any, http: Any, pixels: np.ndarray, region: Callable[[int], Any]
) -> None:
    inputs, outputs = registered(grpc_client, pixels, region)
    status = grpc_client.get_system_shared_memory_status().regions
    assert status[name_of(inputs)].key == key_of(inputs)
    assert status[name_of(outputs)].byte_size == 800
    tensor = triton_grpc.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_shared_memory(name_of(inputs), pixels.nbytes)
    wanted = triton_grpc.InferRequestedOutput(OUTPUT)
    wanted.set_shared_memory(name_of(outputs), len(pixels) * 40)
    response = grpc_client.infer(MODEL, [tensor], outputs=[wanted]).get_response()
    output = response.outputs[0]
    assert list(output.shape) == [len(pixels), 10]
    assert output.parameters["shared_memory_region"].string_param == name_of(outputs)
    assert output.parameters["shared_memory_byte_size"].int64_param == len(pixels) * 40
    assert response.raw_output_contents == [b""]
    got = shm.get_contents_as_numpy(outputs, np.float32, [len(pixels), 10])
    np.testing.assert_array_equal(got, binary_answer(http, pixels))
    grpc_client.unregister_system_shared_memory()
    assert not grpc_client.get_system_shared_memory_status().regions


def test_shared_memory_input_at_an_offset_and_output_over_the_wire(
    http: Any, pixels: np.ndarray, region: Callable[[int], Any]
) -> None:
    """A region inside an object (its own offset), a tensor at an offset inside the region, and
    an output that still comes back in the body."""
    handle = region(4096 + 2 * pixels.nbytes)
    shm.set_shared_memory_region(handle, [pixels], offset=4096 + pixels.nbytes)
    http.register_system_shared_memory("mixed", key_of(handle), 2 * pixels.nbytes, offset=4096)
    tensor = triton_http.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_shared_memory("mixed", pixels.nbytes, offset=pixels.nbytes)
    result = http.infer(MODEL, [tensor])
    np.testing.assert_array_equal(result.as_numpy(OUTPUT), binary_answer(http, pixels))


def test_a_cross_site_infer_cannot_write_a_local_clients_region(
    admin_server: Running, http: Any, pixels: np.ndarray, region: Callable[[int], Any]
) -> None:
    """Any web page can make a visitor's browser POST an infer to a local server (no
    Content-Type: no preflight) naming a region a local client registered as its output; a
    browser's request never names one, whatever its site."""
    _, outputs = registered(http, pixels[:1], region)
    shm.set_shared_memory_region(outputs, [np.full(10, 7.0, dtype=np.float32)])
    body = {
        "inputs": [{"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8",
                    "data": pixels[:1].ravel().tolist()}],
        "outputs": [{"name": OUTPUT, "parameters": {
            "shared_memory_region": name_of(outputs), "shared_memory_byte_size": 40}}],
    }  # fmt: skip
    url = f"http://{admin_server.address}/v2/models/{MODEL}/infer"
    page = {"Origin": "https://evil.example", "Sec-Fetch-Site": "cross-site"}
    for headers in (page, {"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        response = httpx.post(url, content=json.dumps(body).encode(), headers=headers)
        assert response.status_code == 403, response.text
        assert "cross-" in response.json()["error"]
    # A page whose name was re-pointed at this host (DNS rebinding) is same-origin to it.
    port = admin_server.address.rsplit(":", 1)[1]
    rebound = {"Host": f"evil.example:{port}", "Origin": f"http://evil.example:{port}"}
    same_origin = {"Origin": f"http://{admin_server.address}", "Sec-Fetch-Site": "same-origin"}
    for headers in (same_origin, rebound, {**rebound, "Sec-Fetch-Site": "same-origin"}):
        response = httpx.post(url, json=body, headers=headers)
        assert response.status_code == 403, response.text
        assert "may not name shared memory" in response.json()["error"]
    untouched = shm.get_contents_as_numpy(outputs, np.float32, [10])
    np.testing.assert_array_equal(untouched, np.full(10, 7.0, dtype=np.float32))
    del body["outputs"]  # the explorer's request: no region named
    assert httpx.post(url, json=body, headers=same_origin).status_code == 200
    assert httpx.post(url, json=body, headers=rebound).status_code == 200


# --- hostile input: a clear 400, and the server keeps serving ----------------------------------


def refused(call: Callable[[], object], status: str = "400") -> str:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == status, caught.value
    return str(caught.value.message())


@pytest.mark.parametrize(
    "key",
    ["/../etc/passwd", "../etc/passwd", "/a/b", "//x", "/.hidden", "", "/" + "x" * 300, "/a\x00b"],
)
def test_keys_that_are_no_plain_shm_name_are_refused(
    http: Any, pixels: np.ndarray, expected: np.ndarray, key: str
) -> None:
    message = refused(lambda: http.register_system_shared_memory("bad", key, 16))
    assert "not a shared-memory object name" in message
    still_serving(http, pixels, expected)


def test_a_symlink_or_missing_object_is_refused(
    http: Any, pixels: np.ndarray, expected: np.ndarray, tmp_path: Any
) -> None:
    target = tmp_path / "secret"
    target.write_bytes(b"x" * 64)
    link = f"/dev/shm/t{uuid.uuid4().hex[:12]}"
    os.symlink(target, link)
    try:
        message = refused(lambda: http.register_system_shared_memory("l", link[8:], 16))
        assert "cannot open" in message
    finally:
        os.unlink(link)
    refused(lambda: http.register_system_shared_memory("m", f"/t{uuid.uuid4().hex}", 16))
    still_serving(http, pixels, expected)


def test_registration_bounds(
    http: Any, pixels: np.ndarray, expected: np.ndarray, region: Callable[[int], Any]
) -> None:
    key = key_of(region(1024))
    assert "beyond" in refused(lambda: http.register_system_shared_memory("r", key, 1025))
    assert "beyond" in refused(lambda: http.register_system_shared_memory("r", key, 1, 1024))
    refused(lambda: http.register_system_shared_memory("r", key, 16, -1))
    refused(lambda: http.register_system_shared_memory("r", key, -16))
    refused(lambda: http.register_system_shared_memory("r", key, 0))
    http.register_system_shared_memory("r", key, 1024)
    assert "already" in refused(lambda: http.register_system_shared_memory("r", key, 16))
    for i in range(7):  # same object, other names: allowed, up to the server's bound of 8
        http.register_system_shared_memory(f"r{i}", key, 16)
    assert "limit" in refused(lambda: http.register_system_shared_memory("r9", key, 16))
    refused(lambda: http.get_system_shared_memory_status("nobody"), "404")
    http.unregister_system_shared_memory("nobody")  # as Triton: nothing to do, no error
    still_serving(http, pixels, expected)


def shm_infer(http: Any, pixels: np.ndarray, **where: Any) -> Callable[[], object]:
    """An infer of ``pixels`` from a region (``input``) into a region (``output``)."""
    tensor = triton_http.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_shared_memory(*where["input"])
    outputs = None
    if "output" in where:
        wanted = triton_http.InferRequestedOutput(OUTPUT, binary_data=True)
        wanted.set_shared_memory(*where["output"])
        outputs = [wanted]
    return lambda: http.infer(MODEL, [tensor], outputs=outputs)


def test_infer_bounds(
    http: Any, pixels: np.ndarray, expected: np.ndarray, region: Callable[[int], Any]
) -> None:
    inputs, outputs = registered(http, pixels, region)
    i, o, size = name_of(inputs), name_of(outputs), pixels.nbytes
    cases: dict[str, dict[str, Any]] = {
        "no shared memory region": dict(input=("nobody", size)),
        "beyond region": dict(input=(i, size, 1)),
        "needs": dict(input=(i, size - 3)),  # not the shape's size
        "too small": dict(input=(i, size), output=(o, 799)),
        "beyond": dict(input=(i, size), output=(o, 800, 8)),
    }
    for words, where in cases.items():
        assert words in refused(shm_infer(http, pixels, **where)), words
    assert "beyond" in refused(shm_infer(http, pixels, input=(i, size, 2**62)))  # no overflow
    still_serving(http, pixels, expected)


def test_bytes_in_a_region_are_held_to_one_encoded_image_a_row_before_they_are_read(
    http: Any,
    grpc_client: Any,
    pixels: np.ndarray,
    expected: np.ndarray,
    region: Callable[[int], Any],
) -> None:
    """A BYTES tensor for an image input holds encoded files, one a row: a 330-byte request
    naming a region as 3,072 BYTES elements a row (3.1 million) had them read and split, 1.2 s
    of a pool thread, before the model refused them (a helper's audit). Its shape is refused
    first now, over both protocols."""
    handle = region(4096)
    http.register_system_shared_memory("strings", key_of(handle), 4096)
    for client, wire in ((http, triton_http), (grpc_client, triton_grpc)):
        tensor = wire.InferInput("images", [1024, 3072], "BYTES")
        tensor.set_shared_memory("strings", 4096)
        status = "413" if wire is triton_http else str(grpc.StatusCode.RESOURCE_EXHAUSTED)
        message = refused(functools.partial(client.infer, MODEL, [tensor]), status)
        assert message.endswith("more than the model's input takes in one request (1024)")
    still_serving(http, pixels, expected)


@pytest.mark.parametrize(
    "parameters",
    [
        {"shared_memory_region": "r"},
        {"shared_memory_byte_size": 16},
        {"shared_memory_region": "r", "shared_memory_byte_size": -1},
        {"shared_memory_region": "r", "shared_memory_byte_size": 16, "shared_memory_offset": -8},
        {"shared_memory_region": 7, "shared_memory_byte_size": 16},
        {"shared_memory_region": "r", "shared_memory_byte_size": "16"},
        {"shared_memory_offset": 8},
    ],
)
def test_malformed_shared_memory_parameters_are_400(
    admin_server: Running, http: Any, pixels: np.ndarray, expected: np.ndarray, parameters: Any
) -> None:
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": [1, 32, 32, 3],
                "datatype": "UINT8",
                "parameters": parameters,
            }
        ]
    }
    reply = httpx.post(f"{admin_server.url}/v2/models/{MODEL}/infer", json=body)
    assert reply.status_code == 400, reply.text
    assert "shared_memory" in reply.json()["error"]
    still_serving(http, pixels, expected)


def test_an_object_truncated_after_registering_is_a_400_not_a_crash(
    http: Any, pixels: np.ndarray, expected: np.ndarray, region: Callable[[int], Any]
) -> None:
    """The client shrinks its object under a registered region: a read or a write past its end
    would be SIGBUS through an mmap; here it is a 400 and the server lives on."""
    inputs, outputs = registered(http, pixels, region)
    size = pixels.nbytes
    for handle in (inputs, outputs):
        os.truncate(f"/dev/shm/{key_of(handle).lstrip('/')}", 100)
    assert "truncated" in refused(shm_infer(http, pixels, input=(name_of(inputs), size)))
    handle = region(size)
    shm.set_shared_memory_region(handle, [pixels])
    http.register_system_shared_memory("whole", key_of(handle), size)
    where = {"input": ("whole", size), "output": (name_of(outputs), 800)}
    assert "truncated" in refused(shm_infer(http, pixels, **where))
    assert os.stat(f"/dev/shm/{key_of(outputs).lstrip('/')}").st_size == 100  # never grown
    still_serving(http, pixels, expected)


def test_grpc_hostile_shared_memory_is_invalid_argument(
    grpc_client: Any, http: Any, pixels: np.ndarray, expected: np.ndarray
) -> None:
    for call in (
        lambda: grpc_client.register_system_shared_memory("g", "/../etc/passwd", 16),
        lambda: grpc_client.register_system_shared_memory("g", "/nothing-here", 16),
    ):
        with pytest.raises(InferenceServerException) as caught:
            call()
        assert caught.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    tensor = triton_grpc.InferInput("images", list(pixels.shape), "UINT8")
    tensor.set_shared_memory("nobody", pixels.nbytes)
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.infer(MODEL, [tensor])
    assert caught.value.status() == str(grpc.StatusCode.INVALID_ARGUMENT)
    with pytest.raises(InferenceServerException) as caught:
        grpc_client.get_system_shared_memory_status("nobody")
    assert caught.value.status() == str(grpc.StatusCode.NOT_FOUND)
    still_serving(http, pixels, expected)


def test_registration_takes_the_admin_rule(server: Running) -> None:
    """The plain interop server has neither a token nor ADMIN_LOOPBACK: all three are refused."""
    http = triton_http.InferenceServerClient(server.address)
    try:
        refused(lambda: http.register_system_shared_memory("x", "/x", 16), "403")
        refused(lambda: http.get_system_shared_memory_status(), "403")
        refused(lambda: http.unregister_system_shared_memory(), "403")
    finally:
        http.close()
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        with pytest.raises(InferenceServerException) as caught:
            client.register_system_shared_memory("x", "/x", 16)
        assert caught.value.status() == str(grpc.StatusCode.PERMISSION_DENIED)
    finally:
        client.close()


def test_fp32_pixels_from_shared_memory(
    http: Any, pixels: np.ndarray, expected: np.ndarray, region: Callable[[int], Any]
) -> None:
    """The model's other input datatype: FP32 in 0..1, read from a region, answers the same."""
    floats = (pixels / 255.0).astype(np.float32)
    handle = region(floats.nbytes)
    shm.set_shared_memory_region(handle, [floats])
    http.register_system_shared_memory("fp32", key_of(handle), floats.nbytes)
    tensor = triton_http.InferInput("images", list(floats.shape), "FP32")
    tensor.set_shared_memory("fp32", floats.nbytes)
    result = http.infer(MODEL, [tensor], outputs=[triton_http.InferRequestedOutput(OUTPUT)])
    np.testing.assert_allclose(result.as_numpy(OUTPUT), expected, atol=ATOL)
