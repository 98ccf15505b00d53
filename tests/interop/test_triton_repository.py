"""A Triton model repository as it is, through the real ``tritonclient`` (HTTP JSON and binary,
gRPC) against a real server: Triton's ``simple`` sample with its config.pbtxt and no card, the
same graph with no config at all (auto-complete), an image classifier with config.pbtxt and a
labels file, and a config this service does not honour (UNAVAILABLE naming the field).

docs/api.md's client table names these tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from tritonclient.utils import InferenceServerException

from service.core.card import MODEL_FILE, read_card
from tests.support.apps import ADMIN, make_settings
from tests.support.interop import MODEL, VERSION, TestImage, lecture_repository
from tests.support.models import CIFAR_CLASSES, tiny_graph
from tests.support.servers import Running, running_server
from tests.support.tensor_models import add_sub_graph, simple_inputs

# Triton's sample config (docs/examples/model_repository/simple/config.pbtxt), its platform the
# ONNX one: the file as a Triton user has it.
SIMPLE_CONFIG = """name: "simple"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [
  {
    name: "INPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "INPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
output [
  {
    name: "OUTPUT0"
    data_type: TYPE_INT32
    dims: [ 16 ]
  },
  {
    name: "OUTPUT1"
    data_type: TYPE_INT32
    dims: [ 16 ]
  }
]
"""
CIFAR_CONFIG = """name: "cifar"
backend: "onnxruntime"
max_batch_size: 32
input [ { name: "images" data_type: TYPE_UINT8 format: FORMAT_NHWC dims: [ 32, 32, 3 ] } ]
output [
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "cifar_labels.txt" },
  { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] }
]
dynamic_batching { max_queue_delay_microseconds: 100 }
"""


def triton_model(repo: Path, name: str, graph: onnx.ModelProto, config: str | None) -> Path:
    folder = repo / name
    (folder / "1").mkdir(parents=True)
    onnx.save(graph, str(folder / "1" / MODEL_FILE))
    if config is not None:
        (folder / "config.pbtxt").write_text(config)
    return folder


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = tmp_path_factory.mktemp("triton") / "models"
    triton_model(repo, "simple", add_sub_graph(["N", 16]), SIMPLE_CONFIG)
    triton_model(repo, "simple_auto", add_sub_graph(["N", 16]), None)
    whole = SIMPLE_CONFIG.replace('"simple"', '"simple_whole"').replace("max_batch_size: 8", "")
    triton_model(
        repo, "simple_whole", add_sub_graph(["N", 16]), whole.replace("[ 16 ]", "[ -1, 16 ]")
    )
    cifar = triton_model(repo, "cifar", tiny_graph(), CIFAR_CONFIG)
    (cifar / "cifar_labels.txt").write_text("\n".join(CIFAR_CLASSES) + "\n")
    broken = SIMPLE_CONFIG.replace('"simple"', '"broken"') + "sequence_batching { }\n"
    triton_model(repo, "broken", add_sub_graph(["N", 16]), broken)
    settings = make_settings(repo, intra_op_threads=1, poll_interval_s=0)
    with running_server(settings) as running:
        yield running


def infer_http(server: Running, model: str, binary: bool) -> dict[str, np.ndarray]:
    first, second = simple_inputs(rows=3)
    client = triton_http.InferenceServerClient(server.address)
    try:
        inputs = []
        for name, array in (("INPUT0", first), ("INPUT1", second)):
            tensor = triton_http.InferInput(name, list(array.shape), "INT32")
            tensor.set_data_from_numpy(array, binary_data=binary)
            inputs.append(tensor)
        wanted = [triton_http.InferRequestedOutput(n, binary) for n in ("OUTPUT0", "OUTPUT1")]
        result = client.infer(model, inputs, outputs=wanted)
        return {"sum": first + second, "difference": first - second, **_outputs(result)}
    finally:
        client.close()


def infer_grpc(server: Running, model: str) -> dict[str, np.ndarray]:
    first, second = simple_inputs(rows=3, seed=1)
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        inputs = []
        for name, array in (("INPUT0", first), ("INPUT1", second)):
            tensor = triton_grpc.InferInput(name, list(array.shape), "INT32")
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        result = client.infer(model, inputs)
        return {"sum": first + second, "difference": first - second, **_outputs(result)}
    finally:
        client.close()


def _outputs(result: triton_http.InferResult | triton_grpc.InferResult) -> dict[str, np.ndarray]:
    return {"OUTPUT0": result.as_numpy("OUTPUT0"), "OUTPUT1": result.as_numpy("OUTPUT1")}


@pytest.mark.parametrize("model", ["simple", "simple_auto", "simple_whole"])
@pytest.mark.parametrize("wire", ["json", "binary", "grpc"])
def test_tritonclient_infers_triton_simple_with_config_pbtxt_and_with_none(
    server: Running, model: str, wire: str
) -> None:
    got = (
        infer_grpc(server, model) if wire == "grpc" else infer_http(server, model, wire == "binary")
    )
    np.testing.assert_array_equal(got["OUTPUT0"], got["sum"])
    np.testing.assert_array_equal(got["OUTPUT1"], got["difference"])
    assert got["OUTPUT0"].dtype == np.int32


def test_the_config_answer_is_the_files_over_http_and_grpc(server: Running) -> None:
    http = triton_http.InferenceServerClient(server.address)
    grpc = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        config = http.get_model_config("simple")
        message = grpc.get_model_config("simple", as_json=True)["config"]
        metadata = grpc.get_model_metadata("simple", as_json=True)
    finally:
        http.close()
        grpc.close()
    assert config["max_batch_size"] == 8
    assert config["platform"] == "onnxruntime_onnx" and config["backend"] == "onnxruntime"
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("INPUT0", "TYPE_INT32", [16]),
        ("INPUT1", "TYPE_INT32", [16]),
    ]
    assert [t["name"] for t in config["output"]] == ["OUTPUT0", "OUTPUT1"]
    assert "dynamic_batching" not in config  # the file has none: each request runs alone
    assert message["max_batch_size"] == 8 and message["input"][0]["dims"] == ["16"]
    assert [t["shape"] for t in metadata["inputs"]] == [["-1", "16"], ["-1", "16"]]


def test_a_model_without_config_takes_its_tensors_from_the_graph(server: Running) -> None:
    client = triton_http.InferenceServerClient(server.address)
    try:
        metadata = client.get_model_metadata("simple_auto")
        config = client.get_model_config("simple_auto")
    finally:
        client.close()
    assert [(t["name"], t["datatype"], t["shape"]) for t in metadata["inputs"]] == [
        ("INPUT0", "INT32", [-1, 16]),
        ("INPUT1", "INT32", [-1, 16]),
    ]
    assert config["input"][0]["dims"] == [16] and config["max_batch_size"] > 0


def test_an_image_classifier_from_config_pbtxt_serves_its_labels(server: Running) -> None:
    pixels = np.random.default_rng(2).integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        tensor = triton_grpc.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        wanted = triton_grpc.InferRequestedOutput("probabilities", class_count=3)
        result = client.infer("cifar", [tensor], outputs=[wanted])
        config = client.get_model_config("cifar", as_json=True)["config"]
    finally:
        client.close()
    top = result.as_numpy("probabilities")
    assert top.shape == (2, 3)
    labels = [entry.decode().split(":")[2] for entry in top.ravel()]
    assert set(labels) <= set(CIFAR_CLASSES)
    probabilities = config["output"][0]
    assert probabilities["label_filename"] == "cifar_labels.txt"
    assert config["input"][0]["format"] == "FORMAT_NHWC"
    assert config["dynamic_batching"]["max_queue_delay_microseconds"] == "100"
    top_k = httpx.post(
        f"{server.url}/v2/models/cifar/infer",
        json={
            "inputs": [
                {"name": "images", "datatype": "UINT8", "shape": [1, 32, 32, 3],
                 "data": pixels[:1].ravel().tolist()}
            ],
            "outputs": [{"name": "probabilities", "parameters": {"classification": 1}}],
        },
    )  # fmt: skip
    assert top_k.status_code == 200, top_k.text


def test_an_unhonoured_config_is_unavailable_naming_the_field(server: Running) -> None:
    index = httpx.post(f"{server.url}/v2/repository/index", headers=ADMIN, json={}).json()
    broken = [row for row in index if row["name"] == "broken"]
    assert broken and broken[0]["state"] == "UNAVAILABLE"
    assert "'sequence_batching' is not supported here" in broken[0]["reason"]
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        assert not client.is_model_ready("broken")
        first, second = simple_inputs()
        inputs = [triton_grpc.InferInput(n, [1, 16], "INT32") for n in ("INPUT0", "INPUT1")]
        inputs[0].set_data_from_numpy(first)
        inputs[1].set_data_from_numpy(second)
        with pytest.raises(InferenceServerException, match="sequence_batching"):
            client.infer("broken", inputs)
        assert client.is_model_ready("simple")  # the rest keep serving
    finally:
        client.close()


def test_max_batch_size_0_gives_dims_as_the_whole_shape(server: Running) -> None:
    """Triton's rule: no batch axis implied, each request one run, whatever its first dim."""
    client = triton_http.InferenceServerClient(server.address)
    try:
        config = client.get_model_config("simple_whole")
    finally:
        client.close()
    assert config["max_batch_size"] == 0 and "dynamic_batching" not in config
    assert [t["dims"] for t in config["input"]] == [[-1, 16], [-1, 16]]


LECTURE_CONFIG = """name: "lecture_triton"
platform: "onnxruntime_onnx"
max_batch_size: 64
input [ { name: "images" data_type: TYPE_UINT8 format: FORMAT_NHWC dims: [ 32, 32, 3 ] } ]
output [
  { name: "logits" data_type: TYPE_FP32 dims: [ 10 ] },
  { name: "probabilities" data_type: TYPE_FP32 dims: [ 10 ] label_filename: "labels.txt" }
]
dynamic_batching { }
"""


@pytest.fixture(scope="module")
def lecture_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The shipped lecture model twice: with its card, and as a Triton folder of its graph."""
    repo = lecture_repository(tmp_path_factory.mktemp("lecture"))
    shipped = repo / MODEL / str(VERSION)
    folder = triton_model(
        repo, "lecture_triton", onnx.load(str(shipped / MODEL_FILE)), LECTURE_CONFIG
    )
    (folder / "labels.txt").write_text("\n".join(read_card(shipped).class_names) + "\n")
    with running_server(make_settings(repo, intra_op_threads=1, poll_interval_s=0)) as running:
        yield running


def classify(server: Running, model: str, images: list[TestImage]) -> list[list[str]]:
    files = [("file", (f"{i}.jpg", image.jpeg, "image/jpeg")) for i, image in enumerate(images)]
    answer = httpx.post(
        f"{server.url}/v1/models/{model}:classify", params={"top_k": 3}, files=files, timeout=60
    )
    assert answer.status_code == 200, answer.text
    return [[f"{p['probability']:f}:{p['index']}:{p['name']}" for p in row]
            for row in answer.json()["predictions"]]  # fmt: skip


def test_the_lecture_graph_from_config_pbtxt_classifies_as_its_carded_self(
    lecture_pair: Running, cifar_images: list[TestImage], pixels: np.ndarray
) -> None:
    """Labels from labels.txt, :classify and the classification extension: what the card gives."""
    carded = classify(lecture_pair, MODEL, cifar_images)
    assert classify(lecture_pair, "lecture_triton", cifar_images) == carded
    client = triton_grpc.InferenceServerClient(lecture_pair.grpc_url)
    try:
        tensor = triton_grpc.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        wanted = triton_grpc.InferRequestedOutput("probabilities", class_count=3)
        result = client.infer("lecture_triton", [tensor], outputs=[wanted])
    finally:
        client.close()
    got = [[e.decode() for e in row] for row in result.as_numpy("probabilities")]
    assert got == carded
