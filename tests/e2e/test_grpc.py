"""End to end over gRPC: the real ``tritonclient.grpc`` client (and the protocol's own stub for
what tritonclient does not send) against REST and gRPC of one server on loopback."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from service.api.grpc.servicer import grpc_code, peer_host
from service.core import errors
from service.settings import Settings
from tests.support.models import CIFAR_CLASSES, make_model_repo, tiny_reference
from tests.support.servers import Running, running_server

MAX_IMAGES = 64


def settings_for(repo: Path, **changes: Any) -> Settings:
    return Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        max_images_per_request=MAX_IMAGES,
        poll_interval_s=0,
        **changes,
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """Local development's settings: no token, ADMIN_LOOPBACK, this host as a trusted proxy."""
    repo = make_model_repo(tmp_path_factory.mktemp("grpc"))
    settings = settings_for(repo, admin_loopback=True, trusted_proxies="127.0.0.1")
    with running_server(settings) as running:
        yield running


@pytest.fixture
def client(server: Running) -> Iterator[Any]:
    client = triton.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture
def stub(server: Running) -> Iterator[Any]:
    with grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def status_of(call: Any) -> tuple[str, str]:
    """The gRPC status name and message a tritonclient call fails with."""
    with pytest.raises(InferenceServerException) as failure:
        call()
    return str(failure.value.status()).removeprefix("StatusCode."), failure.value.message()


def raw_input(batch: np.ndarray) -> Any:
    tensor = triton.InferInput("images", list(batch.shape), "UINT8")
    tensor.set_data_from_numpy(batch)  # tritonclient.grpc sends raw_input_contents
    return tensor


def test_health_and_metadata(client: Any) -> None:
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("tiny") and client.is_model_ready("tiny", "2")
    assert not client.is_model_ready("tiny", "1")  # on disk, not served under "latest"
    assert not client.is_model_ready("nope")
    server = client.get_server_metadata()
    assert (server.name, server.version) == ("cifar-serve", "0.1.0")
    assert "model_repository" in server.extensions
    meta = client.get_model_metadata("tiny")
    assert (meta.name, list(meta.versions), meta.platform) == ("tiny", ["2"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("images", "UINT8", [-1, 32, 32, 3])
    ]
    assert [t.name for t in meta.outputs] == ["logits", "probabilities"]
    config = client.get_model_config("tiny").config
    assert config.max_batch_size == MAX_IMAGES
    assert config.parameters["class_names"].string_value.count('"') == 2 * len(CIFAR_CLASSES)
    assert status_of(lambda: client.get_model_metadata("tiny", "1"))[0] == "NOT_FOUND"
    # Versions are ASCII digits: "\u0662" (Arabic-Indic 2) is no name for version 2.
    assert status_of(lambda: client.get_model_metadata("tiny", "\u0662"))[0] == "NOT_FOUND"
    assert not client.is_model_ready("tiny", "\u0662")


def test_raw_uint8_batch_matches_rest_for_the_same_images(client: Any, server: Running) -> None:
    batch = np.random.default_rng(11).integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    result = client.infer("tiny", [raw_input(batch)], request_id="r1")
    response = result.get_response()
    assert (response.model_name, response.model_version, response.id) == ("tiny", "2", "r1")
    grpc_probabilities = result.as_numpy("probabilities")
    assert result.as_numpy("logits").shape == (16, 10)

    body = {
        "inputs": [
            {"name": "images", "shape": list(batch.shape), "datatype": "UINT8",
             "data": batch.ravel().tolist()}
        ],
        "outputs": [{"name": "probabilities"}],
    }  # fmt: skip
    rest = httpx.post(f"{server.url}/v2/models/tiny/infer", json=body, timeout=10)
    assert rest.status_code == 200, rest.text
    rest_probabilities = np.array(rest.json()["outputs"][0]["data"], np.float32).reshape(16, 10)
    np.testing.assert_array_equal(grpc_probabilities, rest_probabilities)
    np.testing.assert_allclose(grpc_probabilities, tiny_reference(batch), atol=1e-5)

    only = client.infer("tiny", [raw_input(batch[:3])], model_version="2",
                        outputs=[triton.InferRequestedOutput("probabilities")])  # fmt: skip
    assert [o.name for o in only.get_response().outputs] == ["probabilities"]


def test_typed_contents_uint_and_fp32_give_the_raw_answer(stub: Any) -> None:
    batch = np.random.default_rng(5).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    expected = tiny_reference(batch)
    for datatype, field, values in [
        ("UINT8", "uint_contents", batch.ravel().tolist()),
        ("FP32", "fp32_contents", (batch / 255.0).ravel().tolist()),
    ]:
        request = service_pb2.ModelInferRequest(model_name="tiny")
        tensor = request.inputs.add(name="images", datatype=datatype, shape=list(batch.shape))
        getattr(tensor.contents, field).extend(values)
        response = stub.ModelInfer(request, timeout=10)
        names = [o.name for o in response.outputs]
        raw = response.raw_output_contents[names.index("probabilities")]
        probabilities = np.frombuffer(raw, np.float32).reshape(3, 10)
        np.testing.assert_allclose(probabilities, expected, atol=1e-5)


def test_errors_become_status_codes_and_the_server_keeps_answering(
    client: Any, stub: Any, server: Running
) -> None:
    batch = np.zeros((2, 32, 32, 3), np.uint8)
    code, message = status_of(lambda: client.infer("nope", [raw_input(batch)]))
    assert (code, "unknown model 'nope'" in message) == ("NOT_FOUND", True)
    # Versions are ASCII digits: "\u0662" (Arabic-Indic 2) does not name version 2.
    code, message = status_of(
        lambda: client.infer("tiny", [raw_input(batch)], model_version="\u0662")
    )
    assert code == "NOT_FOUND" and "not a positive integer" in message
    code, message = status_of(lambda: client.infer("tiny", [raw_input(batch[:, :16])]))
    assert code == "INVALID_ARGUMENT" and "does not fit [-1, 32, 32, 3]" in message
    too_many = np.zeros((MAX_IMAGES + 1, 32, 32, 3), np.uint8)
    assert status_of(lambda: client.infer("tiny", [raw_input(too_many)]))[0] == (
        "RESOURCE_EXHAUSTED"
    )
    outputs = [triton.InferRequestedOutput("embeddings")]
    code, message = status_of(lambda: client.infer("tiny", [raw_input(batch)], outputs=outputs))
    assert code == "INVALID_ARGUMENT" and "embeddings" in message

    cases = [  # (inputs, raw contents, what the message names)
        ([("images", "UINT8", [2, 32, 32, 3])], [b"\0" * 100], "100 bytes of raw data"),
        ([("images", "UINT8", [1, 32, 32, 3])], [], "data holds 0 values"),
        ([("images", "UINT16", [1, 32, 32, 3])], [b"\0" * 6144], "datatype 'UINT16'"),
        ([("images", "UINT8", [1, 32, 32, 3])] * 2, [b"\0" * 3072], "1 raw_input_contents"),
        ([("pixels", "UINT8", [1, 32, 32, 3])], [b"\0" * 3072], "takes one input 'images'"),
    ]
    for inputs, raw, expected in cases:
        request = service_pb2.ModelInferRequest(model_name="tiny", raw_input_contents=raw)
        for name, datatype, shape in inputs:
            request.inputs.add(name=name, datatype=datatype, shape=shape)
        with pytest.raises(grpc.RpcError) as failure:
            stub.ModelInfer(request, timeout=10)
        assert failure.value.code() is grpc.StatusCode.INVALID_ARGUMENT, expected
        assert expected in failure.value.details()

    assert client.is_server_ready()
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert 'grpc_requests_total{code="NOT_FOUND",method="ModelInfer"} 2.0' in metrics
    assert 'grpc_requests_total{code="OK",method="ServerReady"}' in metrics


def test_repository_calls_from_a_direct_local_client_under_admin_loopback(client: Any) -> None:
    index = client.get_model_repository_index()
    rows = {(m.name, m.version): m.state for m in index.models}
    assert rows[("tiny", "2")] == "READY" and rows[("tiny", "1")] == "UNLOADED"
    ready = client.get_model_repository_index(as_json=True)
    assert {"name": "tiny", "version": "2", "state": "READY"} in ready["models"]
    client.unload_model("tiny")
    try:
        assert not client.is_model_ready("tiny")
        assert status_of(lambda: client.get_model_metadata("tiny"))[0] == "NOT_FOUND"
    finally:
        client.load_model("tiny")
    assert client.is_model_ready("tiny")
    assert status_of(lambda: client.load_model("nope"))[0] == "NOT_FOUND"
    code, message = status_of(lambda: client.load_model("tiny", config='{"x": 1}'))
    assert code == "INVALID_ARGUMENT" and "load failed" in message


@pytest.mark.parametrize(
    "metadata",
    [
        {"x-forwarded-for": "203.0.113.9"},  # through this host's (trusted) proxy
        {"x-forwarded-for": "127.0.0.1"},  # forwarded is never local, whatever it says
        {"x-real-ip": "127.0.0.1"},
        {"forwarded": "for=127.0.0.1"},
    ],
)
def test_forwarded_repository_calls_are_not_local_under_admin_loopback(
    client: Any, metadata: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="service.api.admin")
    code, message = status_of(lambda: client.get_model_repository_index(headers=metadata))
    assert code == "PERMISSION_DENIED" and "ADMIN_TOKEN" in message
    assert status_of(lambda: client.unload_model("tiny", headers=metadata))[0] == (
        "PERMISSION_DENIED"
    )
    assert client.is_model_ready("tiny")
    if "x-forwarded-for" in metadata:  # the trusted proxy's client is the one in the log
        client_address = metadata["x-forwarded-for"]
        assert f"gRPC RepositoryIndex refused for client '{client_address}'" in caplog.text


def test_repository_calls_are_refused_without_a_token_configured(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    with running_server(settings_for(repo)) as server:
        client = triton.InferenceServerClient(server.grpc_url)
        try:
            for call in (
                client.get_model_repository_index,
                lambda: client.unload_model("tiny"),
                lambda: client.load_model("tiny"),
            ):
                code, message = status_of(call)
                assert code == "PERMISSION_DENIED" and "ADMIN_TOKEN" in message
            assert client.is_model_ready("tiny")
        finally:
            client.close()


def test_repository_calls_need_the_admin_token_when_set(tmp_path: Path) -> None:
    repo = make_model_repo(tmp_path, {"tiny": [1]}, lecture=False)
    with running_server(settings_for(repo, admin_token="s3cret")) as server:
        client = triton.InferenceServerClient(server.grpc_url)
        try:
            code, message = status_of(client.get_model_repository_index)
            assert code == "UNAUTHENTICATED" and "Bearer" in message
            wrong = {"authorization": "Bearer nope"}
            assert status_of(lambda: client.unload_model("tiny", headers=wrong))[0] == (
                "PERMISSION_DENIED"
            )
            assert client.is_model_ready("tiny")  # refused calls changed nothing
            right = {"authorization": "Bearer s3cret"}
            client.unload_model("tiny", headers=right)
            assert not client.is_model_ready("tiny")
            client.load_model("tiny", headers=right)
            assert client.is_model_ready("tiny")
            assert len(client.get_model_repository_index(headers=right).models) == 1
            # Inference does not need the token.
            client.infer("tiny", [raw_input(np.zeros((1, 32, 32, 3), np.uint8))])
        finally:
            client.close()


def test_status_code_map_and_peer_addresses() -> None:
    expected = {
        errors.ModelNotFound: grpc.StatusCode.NOT_FOUND,
        errors.InvalidInput: grpc.StatusCode.INVALID_ARGUMENT,
        errors.UnprocessableInput: grpc.StatusCode.INVALID_ARGUMENT,
        errors.UnsupportedMediaType: grpc.StatusCode.INVALID_ARGUMENT,
        errors.ModelLoadFailed: grpc.StatusCode.INVALID_ARGUMENT,
        errors.PayloadTooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors.ModelNotReady: grpc.StatusCode.UNAVAILABLE,
        errors.Overloaded: grpc.StatusCode.UNAVAILABLE,
        errors.Unauthorized: grpc.StatusCode.UNAUTHENTICATED,
        errors.Forbidden: grpc.StatusCode.PERMISSION_DENIED,
        errors.ServingError: grpc.StatusCode.INTERNAL,
        errors.ExportError: grpc.StatusCode.INTERNAL,
    }
    assert {kind: grpc_code(kind.status) for kind in expected} == expected
    assert peer_host("ipv4:127.0.0.1:5555") == "127.0.0.1"
    assert peer_host("ipv6:[::1]:5555") == "::1"
    assert peer_host("ipv6:%5B::ffff:10.0.0.2%5D:80") == "::ffff:10.0.0.2"
    assert peer_host("unix:/tmp/socket") is None
