"""Triton's classification extension driven by the real ``tritonclient`` (HTTP JSON and binary,
gRPC) against a real server on the shipped lecture model: each image's top k as
``"score:index:label"`` equals what ``:classify`` answers for the same image file, and hostile
``classification`` parameters are a 400 or INVALID_ARGUMENT naming the output on both wires.

docs/api.md's client table names these tests.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from typing import Any

import grpc
import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from onnx import TensorProto, helper
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.core.card import TensorSpec
from tests.support.apps import make_settings
from tests.support.interop import MODEL, TestImage
from tests.support.models import tiny_graph, write_model
from tests.support.servers import Running, running_server

K = 3


def classify_top_k(server: Running, images: list[TestImage], k: int) -> list[list[str]]:
    """``:classify``'s top k for the image files, written as the extension writes them."""
    files = [("file", (f"{i}.jpg", image.jpeg, "image/jpeg")) for i, image in enumerate(images)]
    response = httpx.post(
        f"{server.url}/v1/models/{MODEL}:classify", params={"top_k": k}, files=files, timeout=60
    )
    assert response.status_code == 200, response.text
    return [
        [f"{p['probability']:f}:{p['index']}:{p['name']}" for p in row]
        for row in response.json()["predictions"]
    ]


def strings(array: np.ndarray) -> list[list[str]]:
    return [[e.decode() if isinstance(e, bytes) else str(e) for e in row] for row in array]


@pytest.mark.parametrize("binary", [False, True], ids=["json", "binary"])
def test_tritonclient_http_classification_equals_classify_top_k(
    server: Running, cifar_images: list[TestImage], pixels: np.ndarray, binary: bool
) -> None:
    client = triton_http.InferenceServerClient(server.address)
    try:
        tensor = triton_http.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels, binary_data=binary)
        wanted = triton_http.InferRequestedOutput("probabilities", binary, class_count=K)
        result = client.infer(MODEL, [tensor], outputs=[wanted])
        output = result.get_output("probabilities")
        assert output["datatype"] == "BYTES" and output["shape"] == [len(pixels), K]
        got = strings(result.as_numpy("probabilities"))
    finally:
        client.close()
    assert got == classify_top_k(server, cifar_images, K)


def test_tritonclient_grpc_classification_equals_classify_top_k(
    server: Running, cifar_images: list[TestImage], pixels: np.ndarray
) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        tensor = triton_grpc.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        wanted = triton_grpc.InferRequestedOutput("probabilities", class_count=K)
        result = client.infer(MODEL, [tensor], outputs=[wanted])
        output = result.get_output("probabilities")
        assert output.datatype == "BYTES" and list(output.shape) == [len(pixels), K]
        got = strings(result.as_numpy("probabilities"))
    finally:
        client.close()
    assert got == classify_top_k(server, cifar_images, K)


def test_tritonclient_grpc_stream_classification_equals_classify_top_k(
    server: Running, cifar_images: list[TestImage], pixels: np.ndarray
) -> None:
    """``ModelStreamInfer`` answers a classification as ``ModelInfer`` does, one per request."""
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(4):
            tensor = triton_grpc.InferInput("images", [1, 32, 32, 3], "UINT8")
            tensor.set_data_from_numpy(pixels[i : i + 1])
            wanted = [triton_grpc.InferRequestedOutput("probabilities", class_count=K)]
            client.async_stream_infer(MODEL, [tensor], request_id=str(i), outputs=wanted)
        got = [answers.get(timeout=30) for _ in range(4)]
        client.stop_stream()
    finally:
        client.close()
    assert [error for _, error in got] == [None] * 4
    by_id = {r.get_response().id: strings(r.as_numpy("probabilities"))[0] for r, _ in got}
    assert [by_id[str(i)] for i in range(4)] == classify_top_k(server, cifar_images[:4], K)


def test_classification_past_the_output_size_answers_every_class(
    server: Running, cifar_images: list[TestImage], pixels: np.ndarray
) -> None:
    """Triton clamps k to the output's size; so does the service."""
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        tensor = triton_grpc.InferInput("images", list(pixels[:2].shape), "UINT8")
        tensor.set_data_from_numpy(pixels[:2])
        wanted = triton_grpc.InferRequestedOutput("probabilities", class_count=2**62)
        got = strings(client.infer(MODEL, [tensor], outputs=[wanted]).as_numpy("probabilities"))
    finally:
        client.close()
    assert got == classify_top_k(server, cifar_images[:2], 10)


def test_classification_of_logits_ranks_them_highest_first(
    server: Running, pixels: np.ndarray
) -> None:
    """Any FP output can be classified: the logits rank as the probabilities do."""
    client = triton_http.InferenceServerClient(server.address)
    try:
        tensor = triton_http.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        outputs = [
            triton_http.InferRequestedOutput("logits", class_count=10),
            triton_http.InferRequestedOutput("probabilities", class_count=10),
        ]
        result = client.infer(MODEL, [tensor], outputs=outputs)
        logits = strings(result.as_numpy("logits"))
        probabilities = strings(result.as_numpy("probabilities"))
    finally:
        client.close()
    for row, ranked in zip(logits, probabilities, strict=True):
        scores = [float(e.split(":")[0]) for e in row]
        assert scores == sorted(scores, reverse=True)
        assert row[0].split(":")[1:] == ranked[0].split(":")[1:]


def rest_infer(server: Running, pixels: np.ndarray, output: dict[str, Any]) -> httpx.Response:
    body = {
        "inputs": [
            {
                "name": "images",
                "shape": list(pixels.shape),
                "datatype": "UINT8",
                "data": pixels.ravel().tolist(),
            }
        ],
        "outputs": [output],
    }
    return httpx.post(f"{server.url}/v2/models/{MODEL}/infer", json=body, timeout=60)


HOSTILE_REST = [0, -1, "3", 2.5, True, None, [3], {"k": 3}, 10**30]  # 10**30: JSON reads a float


@pytest.mark.parametrize("value", HOSTILE_REST, ids=repr)
def test_rest_refuses_a_hostile_classification_naming_the_output(
    server: Running, pixels: np.ndarray, value: Any
) -> None:
    response = rest_infer(
        server, pixels[:1], {"name": "probabilities", "parameters": {"classification": value}}
    )
    assert response.status_code == 400, response.text
    assert "output 'probabilities'" in response.json()["error"]


def test_rest_clamps_the_largest_json_integer_to_the_output_size(
    server: Running, pixels: np.ndarray
) -> None:
    output = {"name": "probabilities", "parameters": {"classification": 2**64 - 1}}
    response = rest_infer(server, pixels[:1], output)
    assert response.status_code == 200, response.text
    tensor = response.json()["outputs"][0]
    assert tensor["datatype"] == "BYTES" and tensor["shape"] == [1, 10]


def test_rest_refuses_classification_of_an_unknown_output(
    server: Running, pixels: np.ndarray
) -> None:
    response = rest_infer(server, pixels[:1], {"name": "nope", "parameters": {"classification": 3}})
    assert response.status_code == 400, response.text
    assert "output 'nope'" in response.json()["error"]


GRPC_HOSTILE = [
    ("int64_param", 0),
    ("int64_param", -1),
    ("string_param", "3"),
    ("bool_param", True),
    ("uint64_param", 3),
    ("double_param", 3.0),
]


def grpc_infer(server: Running, pixels: np.ndarray, output: str, kind: str, value: Any) -> Any:
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="images", datatype="UINT8", shape=list(pixels.shape))
    request.raw_input_contents.append(pixels.tobytes())
    wanted = request.outputs.add(name=output)
    setattr(wanted.parameters["classification"], kind, value)
    with grpc.insecure_channel(server.grpc_url) as channel:
        return service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request, timeout=60)


@pytest.mark.parametrize(("kind", "value"), GRPC_HOSTILE, ids=[f"{k}={v}" for k, v in GRPC_HOSTILE])
def test_grpc_refuses_a_hostile_classification_naming_the_output(
    server: Running, pixels: np.ndarray, kind: str, value: Any
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        grpc_infer(server, pixels[:1], "probabilities", kind, value)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output 'probabilities'" in (refused.value.details() or "")


def test_grpc_refuses_classification_of_an_unknown_output_and_keeps_serving(
    server: Running, pixels: np.ndarray
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        grpc_infer(server, pixels[:1], "nope", "int64_param", 3)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "output 'nope'" in (refused.value.details() or "")
    answer = grpc_infer(server, pixels[:1], "probabilities", "int64_param", 1)
    assert answer.outputs[0].datatype == "BYTES" and list(answer.outputs[0].shape) == [1, 1]


def test_server_metadata_lists_the_classification_extension(server: Running) -> None:
    assert "classification" in httpx.get(f"{server.url}/v2").json()["extensions"]
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        assert "classification" in client.get_server_metadata().extensions
    finally:
        client.close()


def test_a_long_classification_is_formatted_off_the_loop_and_still_ranked(
    server: Running,
) -> None:
    """256 images x 10 classes: past the strings formatted on the event loop."""
    pixels = np.random.default_rng(1).integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    client = triton_http.InferenceServerClient(server.address, network_timeout=120)
    try:
        tensor = triton_http.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        plain = client.infer(MODEL, [tensor]).as_numpy("probabilities")
        wanted = triton_http.InferRequestedOutput("probabilities", class_count=10)
        got = strings(client.infer(MODEL, [tensor], outputs=[wanted]).as_numpy("probabilities"))
    finally:
        client.close()
    assert plain is not None
    order = np.argsort(-plain, axis=1, kind="stable")
    assert [[int(e.split(":")[1]) for e in row] for row in got] == order.tolist()


def top1_graph() -> onnx.ModelProto:
    """The tiny classifier with a third output, ``top1``: INT64 class indices (ArgMax)."""
    model = tiny_graph()
    model.graph.node.append(helper.make_node("ArgMax", ["logits"], ["top1"], axis=1, keepdims=1))
    model.graph.output.append(helper.make_tensor_value_info("top1", TensorProto.INT64, ["N", 1]))
    return model


@pytest.fixture(scope="module")
def top1_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = tmp_path_factory.mktemp("classification") / "models"
    outputs = [
        TensorSpec("logits", "FP32", [-1, 10]),
        TensorSpec("probabilities", "FP32", [-1, 10]),
        TensorSpec("top1", "INT64", [-1, 1]),
    ]
    write_model(repo, "top1", 1, graph=top1_graph(), card_changes={"outputs": outputs})
    with running_server(make_settings(repo)) as running:
        yield running


def test_classification_of_an_integer_output_is_refused_on_both_wires(
    top1_server: Running, pixels: np.ndarray
) -> None:
    body = {
        "inputs": [
            {"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}
        ],
        "outputs": [{"name": "top1", "parameters": {"classification": 1}}],
    }
    response = httpx.post(f"{top1_server.url}/v2/models/top1/infer", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert "output 'top1'" in response.json()["error"] and "INT64" in response.json()["error"]
    client = triton_grpc.InferenceServerClient(top1_server.grpc_url)
    try:
        tensor = triton_grpc.InferInput("images", [1, 32, 32, 3], "UINT8")
        tensor.set_data_from_numpy(pixels[:1])
        with pytest.raises(InferenceServerException, match="output 'top1'") as refused:
            client.infer("top1", [tensor], outputs=[triton_grpc.InferRequestedOutput("top1", 1)])
        assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
        plain = client.infer("top1", [tensor], outputs=[triton_grpc.InferRequestedOutput("top1")])
        assert plain.as_numpy("top1") is not None  # the output itself is served as before
    finally:
        client.close()
