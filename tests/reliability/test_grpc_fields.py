"""A large gRPC inference message has its protobuf fields counted before protobuf parses it: one
of 60 MiB of empty fields held the event loop 2.3-4.5 s and grew the server by 1-2.7 GB."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.api.grpc import stream, wire
from service.settings import Settings
from tests.support.models import make_model_repo
from tests.support.servers import running_server

ROWS = 8


def varint(value: int) -> bytes:
    """``value`` as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    return bytes([*out, value])


HEAD = service_pb2.ModelInferRequest(model_name="tiny", id="mine").SerializeToString()
UNPACKED = b"\x20\x00" * 20_000  # uint_contents, one field a value
UNPACKED_INPUT = b"\x0a\x06images\x2a" + varint(len(UNPACKED)) + UNPACKED


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    repo = make_model_repo(tmp_path_factory.mktemp("grpc-fields"), lecture=False)
    settings = Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        max_images_per_request=ROWS,
        max_request_bytes=1_000_000,
        poll_interval_s=0,
    )
    with running_server(settings) as server, grpc.insecure_channel(server.grpc_url) as channel:
        yield channel


@pytest.fixture
def parsed(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The threads on which the server parsed a counted message, in order."""
    threads: list[str] = []
    parse = stream.PARSE_INFER_REQUEST

    def recorded(data: bytes) -> Any:
        threads.append(threading.current_thread().name)
        return parse(data)

    monkeypatch.setattr(stream, "PARSE_INFER_REQUEST", recorded)
    return threads


def infer_bytes(channel: grpc.Channel) -> Callable[..., Any]:
    """``ModelInfer`` taking the message's bytes as they are."""
    path = "/inference.GRPCInferenceService/ModelInfer"
    return channel.unary_unary(
        path,
        request_serializer=lambda data: data,
        response_deserializer=service_pb2.ModelInferResponse.FromString,
    )


HOSTILE = {  # each over UNCOUNTED_BYTES, each under the message limit
    "empty parameters": HEAD + b"\x22\x00" * 100_000,
    "empty raw contents": HEAD + b"\x3a\x00" * 100_000,
    "empty inputs": HEAD + b"\x2a\x00" * 100_000,
    "typed values not packed": HEAD + b"\x2a" + varint(len(UNPACKED_INPUT)) + UNPACKED_INPUT,
}


@pytest.mark.parametrize("data", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_message_of_many_fields_is_refused_unparsed(
    channel: grpc.Channel, parsed: list[str], data: bytes
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        infer_bytes(channel)(data, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = refused.value.details() or ""
    assert f"more than {wire.FIELD_SLACK + ROWS} protobuf fields" in details
    assert "'tiny'" in details and "packed" in details
    assert parsed == []  # protobuf never saw it
    assert_answers(channel, rows(1))


def rows(count: int, parameters: int = 0) -> service_pb2.ModelInferRequest:
    """``count`` images of the tiny model, each a different grey, with ``parameters`` unknown
    parameters (4 fields each)."""
    message = service_pb2.ModelInferRequest(model_name="tiny")
    message.inputs.add(name="images", datatype="UINT8", shape=[count, 32, 32, 3])
    pixels = np.arange(count, dtype=np.uint8)[:, None, None, None] * 30 + np.zeros((32, 32, 3))
    message.raw_input_contents.append(pixels.astype(np.uint8).tobytes())
    for i in range(parameters):
        message.parameters[f"p{i}"].int64_param = i
    return message


def assert_answers(channel: grpc.Channel, message: service_pb2.ModelInferRequest) -> None:
    """The message is answered, each image as it is when it comes alone (a small message; a
    batch runs other kernels: within 1e-4)."""
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    answer = stub.ModelInfer(message, timeout=30)
    count = message.inputs[0].shape[0]
    got = np.frombuffer(answer.raw_output_contents[0], np.float32).reshape(count, -1)
    images = np.frombuffer(message.raw_input_contents[0], np.uint8).reshape(count, -1)
    for row, image in zip(got, images, strict=True):
        alone = service_pb2.ModelInferRequest(model_name="tiny")
        alone.inputs.add(name="images", datatype="UINT8", shape=[1, 32, 32, 3])
        alone.raw_input_contents.append(image.tobytes())
        expected = stub.ModelInfer(alone, timeout=30).raw_output_contents[0]
        np.testing.assert_allclose(row, np.frombuffer(expected, np.float32), atol=1e-4)


def test_a_large_message_of_few_fields_is_counted_and_parsed_on_the_loop(
    channel: grpc.Channel, parsed: list[str]
) -> None:
    message = rows(ROWS)
    assert len(message.SerializeToString()) > wire.UNCOUNTED_BYTES
    assert_answers(channel, message)
    assert len(parsed) == 1 and not parsed[0].startswith("request-work")  # the loop's thread


@pytest.mark.parametrize(
    "why",
    ["more fields than the loop counts", "more bytes than the loop parses"],
)
def test_a_large_message_is_counted_and_parsed_on_the_work_pool_past_the_loops_share(
    channel: grpc.Channel, parsed: list[str], monkeypatch: pytest.MonkeyPatch, why: str
) -> None:
    if why == "more bytes than the loop parses":
        monkeypatch.setattr(wire, "LOOP_PARSE_BYTES", wire.UNCOUNTED_BYTES)
        message = rows(ROWS)
    else:
        message = rows(ROWS, parameters=wire.LOOP_FIELDS // 4 + 1)
    assert_answers(channel, message)
    assert len(parsed) == 1 and parsed[0].startswith("request-work")


def test_a_message_naming_an_unknown_model_is_refused_before_it_is_counted(
    channel: grpc.Channel, parsed: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    counted: list[int] = []
    count = wire.count_fields

    def recorded(data: bytes, most: int) -> int:
        counted.append(most)
        return count(data, most)

    monkeypatch.setattr(wire, "count_fields", recorded)
    data = service_pb2.ModelInferRequest(model_name="nobody").SerializeToString()
    with pytest.raises(grpc.RpcError) as refused:
        infer_bytes(channel)(data + b"\x3a\x00" * 100_000, timeout=30)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert counted == [] and parsed == []


def test_a_stream_answers_a_message_of_many_fields_with_its_id_and_goes_on(
    channel: grpc.Channel, parsed: list[str]
) -> None:
    call = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=lambda data: data,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )
    good = rows(1)
    good.id = "good"
    answers = list(call(iter([HOSTILE["empty parameters"], good.SerializeToString()]), timeout=30))
    by_id = {a.infer_response.id: a for a in answers}
    assert "protobuf fields" in by_id["mine"].error_message
    assert by_id["mine"].infer_response.model_name == "tiny"
    assert by_id["good"].error_message == "" and by_id["good"].infer_response.outputs


def test_a_message_naming_its_model_late_is_held_to_the_slack_and_the_rows(
    channel: grpc.Channel, parsed: list[str]
) -> None:
    """protobuf allows any order; every serializer writes model_name first. A message that
    names it past its first four fields gets no BYTES allowance, only what any request gets."""
    late = b"\x3a\x00" * 4 + b"\x22\x00" * 20_000 + HEAD
    with pytest.raises(grpc.RpcError) as refused:
        infer_bytes(channel)(late, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    details = refused.value.details() or ""
    assert f"more than {wire.FIELD_SLACK + ROWS} protobuf fields" in details
    assert "a model not named in its first fields" in details and parsed == []


def call_bytes(channel: grpc.Channel, method: str) -> Callable[..., Any]:
    """``method`` taking the message's bytes as they are, its answer's bytes as they come."""
    path = f"/inference.GRPCInferenceService/{method}"
    return channel.unary_unary(path, request_serializer=lambda data: data)


OTHER_METHODS = {  # 40 kB each, before anything (the admin check included) could look at them
    "ServerLive": b"\x08\x00" * 20_000,  # unknown varints
    "ModelMetadata": b"\x1a\x00" * 20_000,  # unknown strings
    "RepositoryModelLoad": b"\x1a\x00" * 20_000,  # empty parameters entries
}


@pytest.mark.parametrize("method", OTHER_METHODS, ids=OTHER_METHODS.keys())
def test_every_methods_large_message_of_many_fields_is_refused_unparsed(
    channel: grpc.Channel, method: str
) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        call_bytes(channel, method)(OTHER_METHODS[method], timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == (
        f"the message holds more than {wire.FIELD_SLACK} protobuf fields, more than a "
        f"{method}Request can need"
    )


def test_another_methods_large_message_of_few_fields_is_parsed_and_answered(
    channel: grpc.Channel,
) -> None:
    """A model file sent with RepositoryModelLoad: 100 kB in one field, parsed; no token, so
    the admin rule refuses it (the handler saw the message)."""
    message = service_pb2.RepositoryModelLoadRequest(model_name="tiny")
    message.parameters["file:1/model.onnx"].bytes_param = b"\x00" * 100_000
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as refused:
        stub.RepositoryModelLoad(message, timeout=30)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_another_methods_message_past_its_bytes_is_refused_unread(channel: grpc.Channel) -> None:
    """No other method's request needs 256 KiB; a name of megabytes cost the loop 0.3-0.75 s in
    copies and its error message's repr."""
    data = service_pb2.ModelReadyRequest(name="a" * 300_000).SerializeToString()
    with pytest.raises(grpc.RpcError) as refused:
        call_bytes(channel, "ModelReady")(data, timeout=30)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == (
        f"the message holds {len(data)} bytes (at most {wire.OTHER_MESSAGE_BYTES}), more than "
        "a ModelReadyRequest can need"
    )


def test_a_long_model_name_is_not_found_in_a_short_message(channel: grpc.Channel) -> None:
    """No model's name is longer than 128 characters: one of 100,000 in a large message is
    refused from its length, undecoded; one of 10,000 in a small one is quoted cut, and the
    stream's error answer echoes it cut."""
    message = rows(1)
    message.model_name = "a" * 100_000
    with pytest.raises(grpc.RpcError) as refused:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(message, timeout=30)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.details() == (
        "unknown model: a name of 100000 bytes, longer than any model's (128 characters)"
    )
    message.model_name = "a" * 10_000
    call = channel.stream_stream(
        "/inference.GRPCInferenceService/ModelStreamInfer",
        request_serializer=service_pb2.ModelInferRequest.SerializeToString,
        response_deserializer=service_pb2.ModelStreamInferResponse.FromString,
    )
    (answer,) = list(call(iter([message]), timeout=30))
    assert answer.error_message.startswith("unknown model 'aaaa")
    assert "(10000 characters)" in answer.error_message and len(answer.error_message) < 300
    assert answer.infer_response.model_name == "a" * 128
