"""Every datatype onnxruntime runs, through a real server, with the real ``tritonclient``: an
identity model per datatype over HTTP JSON, HTTP binary, gRPC raw and gRPC typed contents;
Triton's samples ``simple`` (INT32 add/sub), ``simple_int8``, ``simple_string`` (BYTES add/sub via
Cast) and ``simple_identity`` (BYTES); BYTES in shared memory; hostile tensors refused naming the
tensor while the server keeps serving.

docs/api.md's client table names these tests.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
import tritonclient.utils.shared_memory as shm
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import serialize_byte_tensor

from service.core.datatypes import DATATYPES
from tests.support.apps import make_settings
from tests.support.datatype_models import (
    ADD_SUB,
    BYTES_IDENTITY,
    STRINGS,
    datatype_repository,
    identity_name,
    sample,
)
from tests.support.servers import Running, running_server


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = datatype_repository(tmp_path_factory.mktemp("datatypes") / "models")
    settings = make_settings(
        repo, prediction_log=False, work_threads=2, admin_loopback=True, shared_memory_regions=4
    )
    with running_server(settings) as running:
        yield running


def as_text(array: np.ndarray) -> list[str]:
    """A BYTES answer's elements as text, whichever way tritonclient handed them over."""
    return [e.decode() if isinstance(e, bytes) else str(e) for e in array.ravel()]


def same(found: np.ndarray | None, expected: np.ndarray) -> None:
    assert found is not None
    assert found.shape == expected.shape
    if expected.dtype.hasobject:
        assert as_text(found) == as_text(expected)
    else:
        assert found.dtype == expected.dtype
        np.testing.assert_array_equal(found, expected)


def http_infer(
    server: Running, model: str, arrays: dict[str, np.ndarray], datatype: str, binary: bool
) -> Any:
    client = triton_http.InferenceServerClient(server.address)
    try:
        tensors = []
        for name, array in arrays.items():
            tensor = triton_http.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array, binary_data=binary)
            tensors.append(tensor)
        outputs = [
            triton_http.InferRequestedOutput(f"OUTPUT{i}", binary_data=binary)
            for i in range(len(arrays))
        ]
        return client.infer(model, tensors, outputs=outputs)
    finally:
        client.close()


def grpc_infer(server: Running, model: str, arrays: dict[str, np.ndarray], datatype: str) -> Any:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        tensors = []
        for name, array in arrays.items():
            tensor = triton_grpc.InferInput(name, list(array.shape), datatype)
            tensor.set_data_from_numpy(array)  # raw_input_contents
            tensors.append(tensor)
        return client.infer(model, tensors)
    finally:
        client.close()


def grpc_typed_infer(server: Running, model: str, array: np.ndarray, datatype: str) -> Any:
    """``contents`` in the datatype's typed field, not raw bytes (tritonclient sends only raw)."""
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=list(array.shape))
    values = array.ravel().tolist()
    values = [v.encode() for v in values] if datatype == "BYTES" else values
    getattr(tensor.contents, str(DATATYPES[datatype].contents_field)).extend(values)
    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=30)
    return triton_grpc.InferResult(reply)


def identity_model(datatype: str) -> str:
    return BYTES_IDENTITY if datatype == "BYTES" else identity_name(datatype)


# Every datatype on every wire; FP16 has no typed gRPC field (raw only, as Triton).
WIRES = [
    (datatype, wire)
    for datatype in DATATYPES
    for wire in ("json", "binary", "grpc", "grpc-typed")
    if not (wire == "grpc-typed" and DATATYPES[datatype].contents_field is None)
]


@pytest.mark.parametrize(("datatype", "wire"), WIRES, ids=[f"{d}-{w}" for d, w in WIRES])
def test_tritonclient_gets_back_what_it_sent_in_every_datatype(
    server: Running, datatype: str, wire: str
) -> None:
    array = sample(datatype, rows=3)
    model = identity_model(datatype)
    if wire in ("json", "binary"):
        result = http_infer(server, model, {"INPUT0": array}, datatype, wire == "binary")
        assert result.get_output("OUTPUT0")["datatype"] == datatype
    elif wire == "grpc":
        result = grpc_infer(server, model, {"INPUT0": array}, datatype)
        assert result.get_output("OUTPUT0").datatype == datatype
    else:
        result = grpc_typed_infer(server, model, array, datatype)
    same(result.as_numpy("OUTPUT0"), array)


def add_sub_inputs(datatype: str, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Two inputs whose sum and difference stay inside ``datatype`` (INT8: -64..63)."""
    rng = np.random.default_rng(rows)
    bound = 64 if datatype == "INT8" else 1000
    dtype = np.dtype(DATATYPES[datatype].dtype)
    first, second = (rng.integers(-bound, bound, (rows, 16)).astype(dtype) for _ in range(2))
    return first, second


@pytest.mark.parametrize("wire", ["json", "binary", "grpc"])
@pytest.mark.parametrize("model", [*ADD_SUB, STRINGS])
def test_tritonclient_runs_tritons_add_sub_samples(server: Running, model: str, wire: str) -> None:
    """``simple``, ``simple_int8`` and ``simple_string`` (the numbers as strings, as Triton's
    ``simple_http_string_infer_client.py`` sends them), on every wire."""
    numbers = "INT32" if model == STRINGS else ADD_SUB[model]
    first, second = add_sub_inputs(numbers, rows=2)
    total, difference = first + second, first - second
    datatype = numbers
    if model == STRINGS:
        datatype = "BYTES"
        first, second, total, difference = (
            np.array([str(v) for v in a.ravel()], dtype=object).reshape(a.shape)
            for a in (first, second, total, difference)
        )
    arrays = {"INPUT0": first, "INPUT1": second}
    if wire == "grpc":
        result = grpc_infer(server, model, arrays, datatype)
    else:
        result = http_infer(server, model, arrays, datatype, wire == "binary")
    same(result.as_numpy("OUTPUT0"), total)
    same(result.as_numpy("OUTPUT1"), difference)


def test_concurrent_bytes_requests_each_get_their_own_strings(server: Running) -> None:
    """Requests batched together (object arrays joined and split) answer their own rows."""

    def one(seed: int) -> None:
        array = sample("BYTES", rows=1 + seed % 3, seed=seed)
        array[:, 0] = f"request {seed}"
        result = http_infer(server, BYTES_IDENTITY, {"INPUT0": array}, "BYTES", seed % 2 == 0)
        same(result.as_numpy("OUTPUT0"), array)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(24)))


@pytest.mark.parametrize("wire", ["http", "grpc"])
def test_bytes_in_and_out_of_system_shared_memory(server: Running, wire: str) -> None:
    """BYTES laid out in a region as Triton lays them (``tritonclient.utils.shared_memory``
    serializes and reads them back), for an input and an output."""
    array = sample("BYTES", rows=2, seed=7)
    serialized = serialize_byte_tensor(array)  # as Triton's simple_http_shm_string_client.py
    size = len(serialized.item())
    module: Any = triton_http if wire == "http" else triton_grpc
    client = module.InferenceServerClient(server.address if wire == "http" else server.grpc_url)
    keys = {role: f"dt{uuid.uuid4().hex[:12]}" for role in ("in", "out")}
    handles = {role: shm.create_shared_memory_region(k, f"/{k}", size) for role, k in keys.items()}
    try:
        shm.set_shared_memory_region(handles["in"], [serialized])
        for key in keys.values():
            client.register_system_shared_memory(key, f"/{key}", size)
        tensor = module.InferInput("INPUT0", list(array.shape), "BYTES")
        tensor.set_shared_memory(keys["in"], size)
        output = module.InferRequestedOutput("OUTPUT0")
        output.set_shared_memory(keys["out"], size)
        client.infer(BYTES_IDENTITY, [tensor], outputs=[output])
        same(shm.get_contents_as_numpy(handles["out"], np.object_, list(array.shape)), array)
    finally:
        client.unregister_system_shared_memory()
        client.close()
        for handle in handles.values():
            shm.destroy_shared_memory_region(handle)


def test_v1_predict_answers_strings_and_wide_integers(server: Running) -> None:
    """TF Serving bodies on tensor models: BYTES answered as strings (onnxruntime gives ``str``),
    UINT64 past int64 exactly."""
    url = f"{server.url}/v1/models"
    words = ["héllo", "a\x00b", *(str(n) for n in range(14))]
    rows = httpx.post(f"{url}/{BYTES_IDENTITY}:predict", json={"instances": [words]}, timeout=30)
    assert rows.status_code == 200, rows.text
    assert rows.json()["predictions"] == [words]
    columns = {"INPUT0": [["7"] * 16], "INPUT1": [["-2"] * 16]}
    added = httpx.post(f"{url}/{STRINGS}:predict", json={"inputs": columns}, timeout=30)
    assert added.status_code == 200, added.text
    assert added.json()["outputs"] == {"OUTPUT0": [["5"] * 16], "OUTPUT1": [["9"] * 16]}
    wide = [[2**64 - 1, 2**63] * 8]  # (numpy reads 0 beside them as floats: v2 is exact)
    same_back = httpx.post(f"{url}/identity_uint64:predict", json={"instances": wide}, timeout=30)
    assert same_back.status_code == 200 and same_back.json()["predictions"] == wide


def binary_body(datatype: str, shape: list[int], raw: bytes) -> tuple[bytes, dict[str, str]]:
    parameters = {"binary_data_size": len(raw)}
    tensor = {"name": "INPUT0", "datatype": datatype, "shape": shape, "parameters": parameters}
    header = orjson.dumps({"inputs": [tensor]})
    return header + raw, {"Inference-Header-Content-Length": str(len(header))}


def json_body(datatype: str, data: list[Any]) -> tuple[bytes, dict[str, str]]:
    tensor = {"name": "INPUT0", "datatype": datatype, "shape": [1, 16], "data": data}
    return orjson.dumps({"inputs": [tensor]}), {"Content-Type": "application/json"}


LIE = ((1).to_bytes(4, "little") + b"x") * 15 + (1000).to_bytes(4, "little") + b"abc"
REST_HOSTILE = {
    "a lying BYTES length": (
        BYTES_IDENTITY,
        binary_body("BYTES", [1, 16], LIE),
        "element 15 claims 1000",
    ),
    "a BYTES count past the end": (
        BYTES_IDENTITY,
        binary_body("BYTES", [1, 16], (1).to_bytes(4, "little") + b"a"),
        "cannot hold 16 BYTES elements",
    ),
    "not UTF-8": (
        BYTES_IDENTITY,
        binary_body("BYTES", [1, 1], (2).to_bytes(4, "little") + b"\xff\xfe"),
        "not UTF-8",
    ),
    "a string in INT8": ("identity_int8", json_body("INT8", ["1"] * 16), "found strings"),
    "300 in INT8": ("identity_int8", json_body("INT8", [300] * 16), "-128..127"),
    "a float in UINT16": ("identity_uint16", json_body("UINT16", [1.5] * 16), "found fractions"),
    "a number in BYTES": (BYTES_IDENTITY, json_body("BYTES", [1] * 16), "found integers"),
    "a size that does not divide": (
        "identity_int32",
        binary_body("INT32", [1, 16], bytes(63)),
        "63 bytes of binary data",
    ),
}


@pytest.mark.parametrize("case", REST_HOSTILE.values(), ids=REST_HOSTILE)
def test_hostile_tensors_over_rest_are_a_4xx_naming_the_tensor(
    server: Running, case: tuple[str, tuple[bytes, dict[str, str]], str]
) -> None:
    model, (body, headers), expected = case
    url = f"{server.url}/v2/models/{model}/infer"
    response = httpx.post(url, content=body, headers=headers, timeout=30)
    assert response.status_code == 422, response.text
    assert "input 'INPUT0'" in response.json()["error"] and expected in response.text
    assert httpx.get(f"{server.url}/v2/health/ready", timeout=10).status_code == 200


def grpc_request(model: str, datatype: str, raw: bytes | None = None, **contents: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name="INPUT0", datatype=datatype, shape=[1, 16])
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    if raw is not None:
        request.raw_input_contents.append(raw)
    return request


GRPC_HOSTILE = {
    "bytes_contents on INT32": (
        grpc_request("identity_int32", "INT32", bytes_contents=[b"1"] * 16),
        "not bytes_contents",
    ),
    "300 in INT8": (grpc_request("identity_int8", "INT8", int_contents=[300] * 16), "-128..127"),
    "a lying BYTES length": (
        grpc_request(BYTES_IDENTITY, "BYTES", raw=LIE),
        "element 15 claims 1000",
    ),
    "a BYTES count short": (
        grpc_request(BYTES_IDENTITY, "BYTES", bytes_contents=[b"a"] * 15),
        "data holds 15 values",
    ),
    "FP16 typed": (grpc_request("identity_fp16", "FP16", fp32_contents=[1.0] * 16), "raw_input"),
}


@pytest.mark.parametrize("case", GRPC_HOSTILE.values(), ids=GRPC_HOSTILE)
def test_hostile_tensors_over_grpc_are_invalid_argument_naming_the_tensor(
    server: Running, case: tuple[Any, str]
) -> None:
    request, expected = case
    with grpc.insecure_channel(server.grpc_url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            stub.ModelInfer(request, timeout=30)
        assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "input 'INPUT0'" in str(refused.value.details())
        assert expected in str(refused.value.details())
        ready = stub.ServerReady(service_pb2.ServerReadyRequest(), timeout=10)
    assert ready.ready
