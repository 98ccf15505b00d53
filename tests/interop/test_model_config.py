"""Triton's model configuration as its clients read it, and load with a config override
(Triton's repository API, ``parameters.config``), with the real ``tritonclient`` over HTTP and
gRPC against a real server.

docs/api.md's client table names these tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from google.protobuf import json_format
from tritonclient.grpc import model_config_pb2
from tritonclient.utils import InferenceServerException

from service.core.card import TensorSpec
from tests.support.apps import ADMIN, make_settings
from tests.support.models import make_model_repo, tiny_graph, write_model
from tests.support.servers import Running, running_server

GRPC_ADMIN = {k.lower(): v for k, v in ADMIN.items()}  # gRPC metadata keys are lower case
BATCH = {"max_batch_size": 8, "max_batch_delay_ms": 2.0, "max_images_per_request": 64}


def write_one_output_model(repo: Path, name: str) -> None:
    """An image classifier with one output, the shape Triton's image client asks for."""
    graph = tiny_graph()
    kept = [o for o in graph.graph.output if o.name == "probabilities"]
    del graph.graph.output[:]
    graph.graph.output.extend(kept)
    outputs = [TensorSpec("probabilities", "FP32", [-1, 10])]
    write_model(repo, name, 1, graph=graph, card_changes={"outputs": outputs})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """``tiny`` (two outputs), ``single`` (one), ``spare`` (changed by load overrides)."""
    repo = make_model_repo(tmp_path_factory.mktemp("config"), {"tiny": [1], "spare": [1]}, False)
    write_one_output_model(repo, "single")
    settings = make_settings(repo, intra_op_threads=1, poll_interval_s=0, **BATCH)
    with running_server(settings) as running:
        yield running


def rest_config(server: Running, model: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/v2/models/{model}/config")
    assert answer.status_code == 200, answer.text
    config: dict[str, Any] = answer.json()
    return config


def image_client_parse(metadata: Any, config: Any) -> tuple[int, str, str, int, int, int, int]:
    """The checks Triton's ``image_client.py`` (its ``parse_model``) makes before it sends an
    image, restated: one input and one FP32 vector output, NHWC or NCHW, three dims besides the
    batch axis; returns (max_batch_size, input, output, c, h, w, format)."""
    assert len(metadata.inputs) == 1 and len(metadata.outputs) == 1
    assert len(config.input) == 1
    assert metadata.outputs[0].datatype == "FP32"
    batched = config.max_batch_size > 0
    shape = list(metadata.inputs[0].shape)
    assert len(shape) == 3 + batched
    layout = config.input[0].format
    formats = model_config_pb2.ModelInput
    assert layout in (formats.FORMAT_NCHW, formats.FORMAT_NHWC), formats.Format.Name(layout)
    dims = shape[1:] if batched else shape
    h, w, c = dims if layout == formats.FORMAT_NHWC else (dims[1], dims[2], dims[0])
    names = metadata.inputs[0].name, metadata.outputs[0].name
    return config.max_batch_size, *names, c, h, w, layout


def test_triton_image_client_gets_past_the_model_configuration(server: Running) -> None:
    with triton_grpc.InferenceServerClient(server.grpc_url) as client:
        metadata = client.get_model_metadata("single")
        config = client.get_model_config("single").config
    parsed = image_client_parse(metadata, config)
    assert parsed == (
        64,
        "images",
        "probabilities",
        3,
        32,
        32,
        model_config_pb2.ModelInput.FORMAT_NHWC,
    )
    http = triton_http.InferenceServerClient(server.address)
    try:
        rest = http.get_model_config("single")
    finally:
        http.close()
    assert rest["input"][0]["format"] == "FORMAT_NHWC"  # the HTTP client reads the same key


def test_config_carries_format_labels_instances_and_warmup_as_triton_writes_them(
    server: Running,
) -> None:
    rest = rest_config(server, "tiny")
    with triton_grpc.InferenceServerClient(server.grpc_url) as client:
        grpc_config = client.get_model_config("tiny").config
    assert json_format.ParseDict(rest, model_config_pb2.ModelConfig()) == grpc_config
    assert rest["max_batch_size"] == BATCH["max_images_per_request"]
    assert [i["format"] for i in rest["input"]] == ["FORMAT_NHWC"]
    assert {o["name"]: o["label_filename"] for o in rest["output"]} == {
        "logits": "labels.txt",
        "probabilities": "labels.txt",
    }
    assert rest["instance_group"][0]["kind"] == "KIND_CPU"
    assert rest["instance_group"][0]["count"] == 1
    warmup = rest["model_warmup"]
    assert [(w["batch_size"], w["count"]) for w in warmup] == [(1, 1)]
    assert warmup[0]["inputs"]["images"] == {
        "data_type": "TYPE_UINT8",
        "dims": [32, 32, 3],
        "zero_data": True,
    }
    batching = rest["dynamic_batching"]
    assert batching["preferred_batch_size"] == [BATCH["max_batch_size"]]
    assert batching["max_queue_delay_microseconds"] == 2000
    # Every key Triton prints for such a model is there (values differ where the models do).
    assert list(rest)[:18] == [
        "name", "platform", "backend", "runtime", "version_policy", "max_batch_size", "input",
        "output", "batch_input", "batch_output", "optimization", "dynamic_batching",
        "instance_group", "default_model_filename", "cc_model_filenames", "metric_tags",
        "parameters", "model_warmup",
    ]  # fmt: skip


def load(server: Running, model: str, config: Any = None) -> httpx.Response:
    body = {"parameters": {"config": config}} if config is not None else {}
    url = f"{server.url}/v2/repository/models/{model}/load"
    return httpx.post(url, json=body, headers=ADMIN, timeout=60)


def infer(server: Running, model: str, rows: int) -> httpx.Response:
    pixels = np.random.default_rng(rows).integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8)
    tensor = {"name": "images", "shape": list(pixels.shape), "datatype": "UINT8"}
    body = {"inputs": [{**tensor, "data": pixels.ravel().tolist()}]}
    return httpx.post(f"{server.url}/v2/models/{model}/infer", json=body, timeout=60)


def batching(config: dict[str, Any]) -> tuple[int, list[int], int]:
    found = config["dynamic_batching"]
    return (
        config["max_batch_size"],
        found["preferred_batch_size"],
        found["max_queue_delay_microseconds"],
    )


def test_a_load_override_changes_batching_until_a_load_without_one(server: Running) -> None:
    override = {
        "max_batch_size": 4,
        "dynamic_batching": {"preferred_batch_size": [2], "max_queue_delay_microseconds": 500},
    }
    answer = load(server, "spare", json.dumps(override))
    assert answer.status_code == 200, answer.text
    config = rest_config(server, "spare")
    assert batching(config) == (4, [2], 500)
    too_many = infer(server, "spare", 5)
    assert too_many.status_code == 413 and "limit of 4" in too_many.json()["error"]
    assert infer(server, "spare", 4).status_code == 200
    # The configuration as fetched, sent back whole, loads as it is (Triton's round trip).
    assert load(server, "spare", json.dumps(config)).status_code == 200
    assert rest_config(server, "spare") == config
    with triton_grpc.InferenceServerClient(server.grpc_url) as client:
        client.load_model("spare", config=json.dumps({"max_batch_size": 16}), headers=GRPC_ADMIN)
        changed = client.get_model_config("spare").config
    assert changed.max_batch_size == 16
    assert list(changed.dynamic_batching.preferred_batch_size) == [BATCH["max_batch_size"]]
    assert load(server, "spare").status_code == 200  # no config: the settings again
    assert batching(rest_config(server, "spare")) == (64, [8], 2000)


HOSTILE_OVERRIDES = [
    "{",  # not JSON
    "[1]",  # not an object
    '{"x": 1}',  # no such field in model_config.proto
    '{"max_batch_size": "lots"}',  # wrong type
    '{"max_batch_size": 1000000000}',  # over MAX_IMAGES_PER_REQUEST (Triton takes it)
    '{"max_batch_size": 0}',  # no batch axis: these inputs have one
    '{"max_batch_size": -1}',
    '{"dynamic_batching": {"max_queue_delay_microseconds": -5}}',  # a uint64
    '{"dynamic_batching": {"max_queue_delay_microseconds": 5000000}}',  # over a second
    '{"max_batch_size": 8, "dynamic_batching": {"preferred_batch_size": [9]}}',
    '{"dynamic_batching": {"default_queue_policy": {"max_queue_size": 2000000}}}',
    '{"name": "other"}',  # a field that cannot change here
    '{"instance_group": [{"kind": "KIND_GPU", "count": 4}]}',
    '{"sequence_batching": {}}',
    "[" * 10_000,  # nesting
    '{"name": "' + "x" * 70_000 + '"}',  # size
    5,  # not a string
]


@pytest.mark.parametrize("config", HOSTILE_OVERRIDES, ids=range(len(HOSTILE_OVERRIDES)))
def test_a_bad_override_is_a_400_and_the_served_version_stays(server: Running, config: Any) -> None:
    before = rest_config(server, "tiny")
    expected = infer(server, "tiny", 2).json()["outputs"]
    answer = load(server, "tiny", config)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"].startswith("load failed for model 'tiny': config override: ")
    assert rest_config(server, "tiny") == before
    assert infer(server, "tiny", 2).json()["outputs"] == expected


@pytest.mark.parametrize("config", ['{"x": 1}', '{"max_batch_size": 1000000000}', "{"])
def test_a_bad_override_over_grpc_is_invalid_argument(server: Running, config: str) -> None:
    with triton_grpc.InferenceServerClient(server.grpc_url) as client:
        with pytest.raises(InferenceServerException) as failed:
            client.load_model("tiny", config=config, headers=GRPC_ADMIN)
        assert client.is_model_ready("tiny")
    assert failed.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert "load failed for model 'tiny'" in str(failed.value.message())
