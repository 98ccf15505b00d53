"""gRPC streaming (``ModelStreamInfer``) with the real ``tritonclient.grpc`` and raw grpc calls:
every request answered on the stream, errors per request, and abuse that leaves the server
serving (garbage messages, a flood of requests, a client that vanishes mid-stream)."""

from __future__ import annotations

import queue
import threading
from typing import Any

import grpc
import numpy as np
import tritonclient.grpc as triton_grpc
from tritonclient.grpc import service_pb2

from tests.support.interop import MODEL
from tests.support.servers import Running

METHOD = "/inference.GRPCInferenceService/ModelStreamInfer"


def assert_same(got: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(got, expected, atol=1e-5)


def still_serves(server: Running, pixels: np.ndarray, expected: np.ndarray) -> None:
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        tensor = triton_grpc.InferInput("images", list(pixels.shape), "UINT8")
        tensor.set_data_from_numpy(pixels)
        assert_same(client.infer(MODEL, [tensor]).as_numpy("probabilities"), expected)
    finally:
        client.close()


def test_tritonclient_stream_of_100_with_one_bad_request(
    server: Running, pixels: np.ndarray, expected: np.ndarray
) -> None:
    answers: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client = triton_grpc.InferenceServerClient(server.grpc_url)
    try:
        client.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(100):
            image = pixels[i % len(pixels)][None]
            if i == 50:  # one image a pixel short: its shape is wrong
                image = image[:, :31]
            tensor = triton_grpc.InferInput("images", list(image.shape), "UINT8")
            tensor.set_data_from_numpy(image)
            client.async_stream_infer(MODEL, [tensor], request_id=str(i))
        got = [answers.get(timeout=30) for _ in range(100)]
        client.stop_stream()
    finally:
        client.close()
    errors = [error for result, error in got if error is not None]
    results = {r.get_response().id: r for r, error in got if error is None}
    assert len(errors) == 1 and "shape" in str(errors[0])
    assert sorted(results, key=int) == [str(i) for i in range(100) if i != 50]
    for request_id, result in results.items():
        i = int(request_id) % len(pixels)
        assert_same(result.as_numpy("probabilities"), expected[i : i + 1])
    still_serves(server, pixels, expected)


def raw_stream(server: Running, messages: list[bytes], wait: bool = True) -> list[Any]:
    """Send ``messages`` as they are on one stream; the decoded answers."""
    with grpc.insecure_channel(server.grpc_url) as channel:
        call = channel.stream_stream(
            METHOD, response_deserializer=service_pb2.ModelStreamInferResponse.FromString
        )
        return list(call(iter(messages), timeout=60)) if wait else []


def infer_bytes(pixels: np.ndarray, request_id: str) -> bytes:
    request = service_pb2.ModelInferRequest(model_name=MODEL, id=request_id)
    tensor = request.inputs.add(name="images", datatype="UINT8", shape=list(pixels.shape))
    assert tensor is not None
    request.raw_input_contents.append(pixels.tobytes())
    return bytes(request.SerializeToString())


def test_stream_answers_garbage_per_message_and_goes_on(
    server: Running, pixels: np.ndarray, expected: np.ndarray
) -> None:
    messages = [b"\xff\xff\xff", infer_bytes(pixels[:1], "a"), b"\x0a\xff", b""]
    answers = raw_stream(server, messages)
    assert len(answers) == 4
    errors = [a.error_message for a in answers if a.error_message]
    assert len(errors) == 3  # two undecodable messages and an empty request (no model)
    assert sum("not a valid ModelInferRequest" in e for e in errors) == 2
    good = [a for a in answers if not a.error_message]
    assert good[0].infer_response.id == "a"
    still_serves(server, pixels, expected)


def test_stream_flood_is_answered_in_full_under_the_cap(
    server: Running, pixels: np.ndarray, expected: np.ndarray
) -> None:
    count = 1500  # far more than GRPC_STREAM_IN_FLIGHT: the stream reads as answers go out
    messages = [infer_bytes(pixels[i % 20 : i % 20 + 1], str(i)) for i in range(count)]
    answers = raw_stream(server, messages)
    assert sorted(int(a.infer_response.id) for a in answers) == list(range(count))
    assert not any(a.error_message for a in answers)
    still_serves(server, pixels, expected)


def test_stream_client_vanishing_mid_stream_leaves_the_server_serving(
    server: Running, pixels: np.ndarray, expected: np.ndarray
) -> None:
    sent = threading.Event()

    def endless() -> Any:
        for i in range(10**6):
            if i == 200:
                sent.set()
            yield infer_bytes(pixels[:8], str(i))

    channel = grpc.insecure_channel(server.grpc_url)
    call = channel.stream_stream(METHOD)(endless())
    assert sent.wait(30)
    next(call)  # answers are flowing
    call.cancel()
    channel.close()
    still_serves(server, pixels, expected)
