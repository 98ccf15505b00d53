"""Tensor models (a card with ``"kind": "tensor"``) served beside an image classifier, driven by
the real ``tritonclient`` (HTTP JSON and binary, gRPC typed and raw contents) on a real server:
Triton's ``simple`` add/sub sample, the same without a batch axis, a one-input FP32 graph.

docs/api.md's client table names these tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from tests.support.apps import make_settings
from tests.support.servers import Running, running_server
from tests.support.tensor_models import (
    FIXED,
    FP32,
    LONG,
    SIMPLE,
    simple_inputs,
    tensor_repository,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = tensor_repository(tmp_path_factory.mktemp("tensor") / "models")
    settings = make_settings(repo, prediction_log=False, work_threads=2)
    with running_server(settings) as running:
        yield running


def http_inputs(
    first: np.ndarray, second: np.ndarray, binary: bool
) -> list[triton_http.InferInput]:
    tensors = []
    for name, array in (("INPUT0", first), ("INPUT1", second)):
        tensor = triton_http.InferInput(name, list(array.shape), "INT32")
        tensor.set_data_from_numpy(array, binary_data=binary)
        tensors.append(tensor)
    return tensors


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
@pytest.mark.parametrize("model", [SIMPLE, FIXED])
def test_tritonclient_http_adds_and_subtracts(server: Running, binary: bool, model: str) -> None:
    first, second = simple_inputs(rows=3)
    if model == FIXED:  # no batch axis: one [16] vector each
        first, second = first[0], second[0]
    client = triton_http.InferenceServerClient(server.address)
    try:
        outputs = [triton_http.InferRequestedOutput(n, binary) for n in ("OUTPUT0", "OUTPUT1")]
        result = client.infer(model, http_inputs(first, second, binary), outputs=outputs)
    finally:
        client.close()
    assert result.get_output("OUTPUT0")["datatype"] == "INT32"
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), first + second)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), first - second)


@pytest.mark.parametrize("model", [SIMPLE, FIXED])
def test_tritonclient_grpc_adds_and_subtracts(server: Running, model: str) -> None:
    first, second = simple_inputs(rows=2, seed=1)
    if model == FIXED:
        first, second = first[0], second[0]
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        tensors = []
        for name, array in (("INPUT0", first), ("INPUT1", second)):
            tensor = triton_grpc.InferInput(name, list(array.shape), "INT32")
            tensor.set_data_from_numpy(array)  # raw_input_contents
            tensors.append(tensor)
        result = client.infer(model, tensors)
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), first + second)
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), first - second)


@pytest.mark.parametrize("wire", ["http", "grpc"])
def test_a_model_without_a_batch_axis_takes_a_first_axis_past_the_row_limit(
    server: Running, wire: str
) -> None:
    """[2048] is no batch of 2048: MAX_IMAGES_PER_REQUEST (1024) bounds rows, not its shape."""
    first = np.arange(2048, dtype=np.int32)
    second = np.full(2048, 3, dtype=np.int32)
    module: Any = triton_http if wire == "http" else triton_grpc
    address = server.address if wire == "http" else server.grpc_url
    client = module.InferenceServerClient(address)
    try:
        tensors = []
        for name, array in (("INPUT0", first), ("INPUT1", second)):
            tensor = module.InferInput(name, [2048], "INT32")
            tensor.set_data_from_numpy(array)
            tensors.append(tensor)
        result = client.infer(LONG, tensors)
    finally:
        client.close()
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), first - 3)


def test_grpc_typed_contents_reach_a_tensor_model(server: Running) -> None:
    """``int_contents`` rather than raw bytes: the typed gRPC wire."""
    first, second = simple_inputs(rows=1, seed=2)
    request = service_pb2.ModelInferRequest(model_name=SIMPLE)
    for name, array in (("INPUT0", first), ("INPUT1", second)):
        tensor = request.inputs.add(name=name, datatype="INT32", shape=list(array.shape))
        tensor.contents.int_contents.extend(array.ravel().tolist())
    with grpc.insecure_channel(server.grpc_url) as channel:
        reply = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    by_name = dict(zip([o.name for o in reply.outputs], reply.raw_output_contents, strict=True))
    total = np.frombuffer(by_name["OUTPUT0"], np.int32).reshape(first.shape)
    np.testing.assert_array_equal(total, first + second)


def test_tritonclient_http_runs_a_one_input_fp32_model(server: Running) -> None:
    values = np.arange(12, dtype=np.float32).reshape(3, 4) / 7
    client = triton_http.InferenceServerClient(server.address)
    try:
        tensor = triton_http.InferInput("INPUT", [3, 4], "FP32")
        tensor.set_data_from_numpy(values, binary_data=True)
        result = client.infer(FP32, [tensor])
    finally:
        client.close()
    np.testing.assert_allclose(result.as_numpy("OUTPUT"), 2 * values + 1, rtol=1e-6)


def v2_body(inputs: list[dict[str, object]]) -> dict[str, object]:
    return {"inputs": inputs}


def int32(name: str, shape: list[int], datatype: str = "INT32") -> dict[str, object]:
    return {"name": name, "datatype": datatype, "shape": shape, "data": [1] * int(np.prod(shape))}


@pytest.mark.parametrize(
    ("inputs", "named"),
    [
        ([int32("INPUT0", [1, 16])], "INPUT1"),  # missing
        ([int32("INPUT0", [1, 16]), int32("INPUT1", [1, 16]), int32("X", [1, 16])], "X"),
        ([int32("INPUT0", [1, 16]), int32("INPUT1", [1, 16], "INT64")], "INPUT1"),
        ([int32("INPUT0", [1, 16]), int32("INPUT1", [1, 8])], "INPUT1"),
        ([int32("INPUT0", [1, 16]), int32("INPUT1", [2, 16])], "INPUT1"),  # batch sizes differ
        ([int32("INPUT0", [16]), int32("INPUT1", [16])], "INPUT0"),  # no batch axis
    ],
    ids=["missing", "extra", "datatype", "shape", "batch", "rank"],
)
def test_a_bad_tensor_request_is_a_400_naming_the_tensor(
    server: Running, inputs: list[dict[str, object]], named: str
) -> None:
    response = httpx.post(f"{server.url}/v2/models/{SIMPLE}/infer", json=v2_body(inputs))
    assert response.status_code == 400, response.text
    assert named in response.json()["error"]


def test_grpc_refuses_a_missing_input_as_invalid_argument(server: Running) -> None:
    first, _ = simple_inputs()
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        tensor = triton_grpc.InferInput("INPUT0", list(first.shape), "INT32")
        tensor.set_data_from_numpy(first)
        with pytest.raises(InferenceServerException) as refused:
            client.infer(SIMPLE, [tensor])
    finally:
        client.close()
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "INPUT1" in refused.value.message()


def test_metadata_says_which_kind_each_model_is(server: Running) -> None:
    kinds = {
        name: httpx.get(f"{server.url}/v2/models/{name}").json()["parameters"]["kind"]
        for name in ("tiny", SIMPLE, FIXED)
    }
    assert kinds == {"tiny": "image_classifier", SIMPLE: "tensor", FIXED: "tensor"}
    listed = httpx.get(f"{server.url}/v1/models").json()["models"]
    assert {m["name"]: m["versions"][0]["card"]["kind"] for m in listed}[SIMPLE] == "tensor"
    assert {m["name"]: m["kind"] for m in listed} == {
        "tiny": "image_classifier",
        SIMPLE: "tensor",
        FIXED: "tensor",
        FP32: "tensor",
        LONG: "tensor",
    }
    meta = httpx.get(f"{server.url}/v2/models/{SIMPLE}").json()
    assert [t["name"] for t in meta["inputs"]] == ["INPUT0", "INPUT1"]


def test_config_of_a_model_without_a_batch_axis_has_max_batch_size_0(server: Running) -> None:
    client = triton_http.InferenceServerClient(server.address)
    try:
        fixed, simple = client.get_model_config(FIXED), client.get_model_config(SIMPLE)
    finally:
        client.close()
    assert fixed["max_batch_size"] == 0 and "dynamic_batching" not in fixed
    assert fixed["input"][0]["dims"] == [16]
    assert simple["max_batch_size"] > 0 and simple["input"][0]["dims"] == [16]


def test_concurrent_tensor_requests_share_runs(server: Running) -> None:
    """Many clients at once: the statistics count fewer runs than requests (batches > 1), and
    each client gets its own rows back."""
    clients, per_client = 16, 8

    async def one(http: httpx.AsyncClient, seed: int) -> None:
        for i in range(per_client):
            first, second = simple_inputs(rows=1, seed=seed * 100 + i)
            body = v2_body(
                [
                    {"name": "INPUT0", "datatype": "INT32", "shape": [1, 16],
                     "data": first.ravel().tolist()},
                    {"name": "INPUT1", "datatype": "INT32", "shape": [1, 16],
                     "data": second.ravel().tolist()},
                ]
            )  # fmt: skip
            response = await http.post(f"/v2/models/{SIMPLE}/infer", json=body)
            assert response.status_code == 200, response.text
            got = {o["name"]: o["data"] for o in response.json()["outputs"]}
            assert got["OUTPUT0"] == (first + second).ravel().tolist()

    async def run() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as http:
            await asyncio.gather(*(one(http, seed) for seed in range(clients)))

    asyncio.run(run())
    stats = httpx.get(f"{server.url}/v2/models/{SIMPLE}/stats").json()["model_stats"][0]
    assert stats["inference_count"] >= clients * per_client
    assert stats["execution_count"] < stats["inference_count"]


def predict(server: Running, model: str, body: Mapping[str, object]) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/models/{model}:predict", json=body, timeout=30)


def test_v1_predict_takes_named_instances_and_answers_per_row(server: Running) -> None:
    """TF Serving's row format for a multi-input signature: one object per row."""
    first, second = simple_inputs(rows=2, seed=3)
    instances = [
        {"INPUT0": a.tolist(), "INPUT1": b.tolist()} for a, b in zip(first, second, strict=True)
    ]
    response = predict(server, SIMPLE, {"instances": instances})
    assert response.status_code == 200, response.text
    rows = response.json()["predictions"]
    assert [r["OUTPUT0"] for r in rows] == (first + second).tolist()
    assert [r["OUTPUT1"] for r in rows] == (first - second).tolist()


def test_v1_predict_takes_named_columnar_inputs(server: Running) -> None:
    first, second = simple_inputs(rows=2, seed=4)
    body = {"inputs": {"INPUT0": first.tolist(), "INPUT1": second.tolist()}}
    response = predict(server, SIMPLE, body)
    assert response.status_code == 200, response.text
    assert response.json()["outputs"]["OUTPUT1"] == (first - second).tolist()
    fixed = predict(server, FIXED, {"inputs": {"INPUT0": first[0].tolist(),
                                               "INPUT1": second[0].tolist()}})  # fmt: skip
    assert fixed.json()["outputs"]["OUTPUT0"] == (first[0] + second[0]).tolist(), fixed.text


def test_v1_predict_of_a_one_input_model_takes_bare_values(server: Running) -> None:
    values = [[0.0, 1.0, 2.0, 3.0], [4.0, 5.0, 6.0, 7.0]]
    rows = predict(server, FP32, {"instances": values})
    assert rows.status_code == 200, rows.text
    assert rows.json()["predictions"] == [[2 * v + 1 for v in row] for row in values]
    columns = predict(server, FP32, {"inputs": values})
    assert columns.json()["outputs"] == rows.json()["predictions"]


@pytest.mark.parametrize(
    ("model", "body", "named"),
    [
        (SIMPLE, {"instances": [{"INPUT0": [1] * 16}]}, "INPUT1"),
        (SIMPLE, {"instances": [{"INPUT0": [1] * 16, "INPUT1": [1] * 8}]}, "INPUT1"),
        (SIMPLE, {"inputs": {"INPUT0": [[1] * 16], "INPUT1": [[1] * 16], "X": [1]}}, "X"),
        (SIMPLE, {"instances": [{"INPUT0": [0.5] * 16, "INPUT1": [1] * 16}]}, "INPUT0"),
        (FIXED, {"instances": [{"INPUT0": [1] * 16, "INPUT1": [1] * 16}]}, "'inputs'"),
        (SIMPLE, {"inputs": {"INPUT0": [[1] * 16], "INPUT1": [[1] * 16]}, "top_k": 2}, "top_k"),
    ],
    ids=["missing", "shape", "extra", "datatype", "rows-without-batch-axis", "top-k"],
)
def test_v1_predict_refuses_a_bad_tensor_body_naming_it(
    server: Running, model: str, body: dict[str, object], named: str
) -> None:
    response = predict(server, model, body)
    assert 400 <= response.status_code < 500, response.text
    assert named in response.json()["error"]


IMAGE_ONLY = [
    ("POST", "/v1/models/{name}:classify", {"files": {"file": ("a.png", b"x", "image/png")}}),
    ("POST", "/v1/models/{name}:predict?top_k=3", {"json": {"inputs": {}}}),
    ("GET", "/v1/models/{name}/layers", {}),
    ("POST", "/v1/models/{name}/activations", {"json": {"instances": [[0]]}}),
    ("GET", "/v1/models/{name}/monitor", {}),
]


@pytest.mark.parametrize(("method", "path", "extra"), IMAGE_ONLY, ids=lambda v: str(v)[:40])
def test_image_only_routes_refuse_a_tensor_model_saying_why(
    server: Running, method: str, path: str, extra: dict[str, object]
) -> None:
    url = server.url + path.format(name=SIMPLE)
    response = httpx.request(method, url, timeout=30, **extra)  # type: ignore[arg-type]
    assert response.status_code == 400, response.text
    assert "is a tensor model" in response.json()["error"]


def test_image_classifier_answers_as_before_beside_tensor_models(server: Running) -> None:
    image = np.zeros((1, 32, 32, 3), np.uint8)
    body = {"inputs": [{"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                        "data": image.ravel().tolist()}]}  # fmt: skip
    response = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body)
    assert response.status_code == 200, response.text
    layers = httpx.get(f"{server.url}/v1/models/tiny/layers")
    assert layers.status_code != 400  # the tiny graph has no lecture table (422), not "tensor"
