"""Tensor abuse over gRPC: each call fails with INVALID_ARGUMENT (or NOT_FOUND,
RESOURCE_EXHAUSTED) and a message, never INTERNAL; the server keeps answering afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.settings import Settings
from tests.support.models import make_model_repo
from tests.support.servers import running_server

PIXELS = 32 * 32 * 3
MAX_BYTES = 200_000


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    repo = make_model_repo(tmp_path_factory.mktemp("grpc-hostile"), lecture=False)
    settings = Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        max_images_per_request=8,
        max_request_bytes=MAX_BYTES,
        poll_interval_s=0,
    )
    with running_server(settings) as server, grpc.insecure_channel(server.grpc_url) as channel:
        yield service_pb2_grpc.GRPCInferenceServiceStub(channel)


def request(
    shape: list[int] | None = None,
    datatype: str = "UINT8",
    raw: bytes | None = None,
    name: str = "images",
    model: str = "tiny",
    version: str = "",
    **contents: Any,
) -> Any:
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name=name, datatype=datatype, shape=shape or [1, 32, 32, 3]
    )
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    message = service_pb2.ModelInferRequest(
        model_name=model, model_version=version, inputs=[tensor]
    )
    if raw is not None:
        message.raw_input_contents.append(raw)
    return message


def fp32(value: float) -> bytes:
    values = np.full((1, 32, 32, 3), 0.5, dtype=np.float32)
    values[0, 0, 0, 0] = value
    return values.tobytes()


CASES: dict[str, tuple[Any, grpc.StatusCode, str]] = {
    "raw shorter than shape": (request(raw=b"\x00" * 10), grpc.StatusCode.INVALID_ARGUMENT, "10"),
    "raw longer than shape": (
        request(raw=b"\x00" * (PIXELS + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "3073",
    ),
    "typed data length": (
        request(uint_contents=[0] * 10),
        grpc.StatusCode.INVALID_ARGUMENT,
        "10",
    ),
    "negative dimension": (
        request(shape=[-1, 32, 32, 3], raw=b""),
        grpc.StatusCode.INVALID_ARGUMENT,
        "negative",
    ),
    "huge batch": (
        request(shape=[10**12, 32, 32, 3], raw=b""),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "limit",
    ),
    "huge product": (
        request(shape=[1, 2**40, 2**20, 3], raw=b""),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "too large",
    ),
    "unknown datatype": (
        request(datatype="FP64", raw=b"\x00" * PIXELS * 8),
        grpc.StatusCode.INVALID_ARGUMENT,
        "FP64",
    ),
    "int64 pixels": (
        request(datatype="INT64", raw=b"\x00" * PIXELS * 8),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INT64",
    ),
    "uint8 typed over 255": (
        request(uint_contents=[300] * PIXELS),
        grpc.StatusCode.INVALID_ARGUMENT,
        "0..255",
    ),
    "NaN in FP32": (
        request(datatype="FP32", raw=fp32(float("nan"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "0..1",
    ),
    "infinity in FP32": (
        request(datatype="FP32", raw=fp32(float("inf"))),
        grpc.StatusCode.INVALID_ARGUMENT,
        "0..1",
    ),
    "wrong input name": (
        request(name="pixels", raw=b"\x00" * PIXELS),
        grpc.StatusCode.INVALID_ARGUMENT,
        "pixels",
    ),
    "unknown model": (
        request(model="../../etc/passwd", raw=b"\x00" * PIXELS),
        grpc.StatusCode.NOT_FOUND,
        "unknown model",
    ),
    "bad version": (
        request(version="-3", raw=b"\x00" * PIXELS),
        grpc.StatusCode.NOT_FOUND,
        "version",
    ),
    # Past what 8 rows of the model's input take (24,576 values): refused on their counts
    # before a value is converted (10 million held the event loop 1.2 s).
    "typed values past the model's input": (
        request(uint_contents=[0] * 30_000),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "30000 values, more than the model's input takes in one request (24576)",
    ),
    "a BYTES shape past the model's input": (
        request(shape=[1, 50_000], datatype="BYTES", bytes_contents=[b""] * 10),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "holds 50000 values, more than the model's input takes in one request (8)",
    ),
    # One field each: counted on the wire and refused before protobuf parses them
    # (tests/reliability/test_grpc_fields.py).
    "BYTES elements past the fields a request takes": (
        request(shape=[1, 50_000], datatype="BYTES", bytes_contents=[b""] * 50_000),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "the message holds more than 1032 protobuf fields",
    ),
    "over the message limit": (
        request(shape=[8, 32, 32, 3], raw=b"\x00" * (MAX_BYTES + 1)),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "",
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_grpc_tensor_abuse_is_refused_with_a_code_and_message(
    stub: Any, case: tuple[Any, grpc.StatusCode, str]
) -> None:
    message, code, words = case
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelInfer(message, timeout=30)
    assert failure.value.code() == code, failure.value.details()
    assert words in (failure.value.details() or "")
    # ...and the server still answers a good call.
    good = stub.ModelInfer(request(raw=b"\x00" * PIXELS), timeout=30)
    assert list(good.outputs[0].shape) == [1, 10]


def test_grpc_refuses_inputs_split_between_raw_and_typed(stub: Any) -> None:
    message = request(raw=b"\x00" * PIXELS)
    message.inputs.append(service_pb2.ModelInferRequest.InferInputTensor(name="x"))
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelInfer(message, timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "raw_input_contents" in (failure.value.details() or "")


def test_grpc_empty_request(stub: Any) -> None:
    with pytest.raises(grpc.RpcError) as failure:
        stub.ModelInfer(service_pb2.ModelInferRequest(model_name="tiny"), timeout=30)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "inputs" in (failure.value.details() or "")


@pytest.mark.parametrize(
    "bad", [request(shape=[7]), service_pb2.ModelInferRequest()], ids=["bad shape", "empty"]
)
def test_a_stream_of_refused_requests_is_ended_not_answered_forever(stub: Any, bad: Any) -> None:
    """Each stream request costs the loop about 50 us however small (an empty one is 5 bytes);
    a stream sending nothing the server can take is ended after REFUSED_IN_A_ROW of them."""
    answers, sent = [], 5_000
    with pytest.raises(grpc.RpcError) as ended:
        for answer in stub.ModelStreamInfer(iter([bad] * sent), timeout=30):
            answers.append(answer)
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests in a row were refused" in (ended.value.details() or "")
    assert 16 <= len(answers) < sent // 10, len(answers)
    assert all(a.error_message for a in answers), answers[0]
    # ...and a stream with good requests among bad ones goes on to its end.
    mixed = [request(raw=b"\x00" * PIXELS) if i % 8 == 0 else bad for i in range(80)]
    answers = list(stub.ModelStreamInfer(iter(mixed), timeout=30))
    assert len(answers) == 80 and sum(not a.error_message for a in answers) == 10
