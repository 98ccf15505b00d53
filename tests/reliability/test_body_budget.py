"""The bytes of request bodies one process holds at once (MAX_BODY_BYTES_IN_FLIGHT), on a real
server: while one client holds most of the budget with a body it has half sent, a body that
would pass it is refused 503 with Retry-After (by its Content-Length before any of it is read; a
chunked one as its bytes arrive), a gRPC inference message UNAVAILABLE (alone, or on a stream
that goes on), small requests are still answered, and the budget is whole again once the holder
finishes or leaves."""

from __future__ import annotations

import contextlib
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from pydantic import ValidationError
from tritonclient.grpc import service_pb2, service_pb2_grpc

from service.core.body_budget import BodyBudget
from service.core.errors import BodyBudgetFull
from service.settings import Settings
from tests.support.models import make_model_repo
from tests.support.servers import Running, running_server, wait_until
from tests.support.sockets import connect, read_to_end

BUDGET = 1_000_000
HELD = 800_000  # what the holding client sends of its body before it waits
INFER = "/v2/models/tiny/infer"
PREDICT = "/v1/models/tiny:predict"


def infer_body(size: int) -> bytes:
    """A valid one-image v2 request padded with JSON whitespace to ``size`` bytes."""
    tensor = {"name": "images", "shape": [1, 32, 32, 3], "datatype": "UINT8", "data": [0] * 3072}
    body = json.dumps({"inputs": [tensor]}).encode()
    return body + b" " * (size - len(body))


def predict_body(size: int) -> bytes:
    body = json.dumps({"instances": [[[[0] * 3] * 32] * 32]}).encode()
    return body + b" " * (size - len(body))


def request(
    path: str, body: bytes | None, length: int | None = None, chunked: bool = False
) -> bytes:
    """A POST of ``body`` (None: the head alone, declaring ``length``) on a connection the server
    closes after answering; ``chunked`` sends it as one chunk, its length undeclared."""
    framing = (
        "Transfer-Encoding: chunked"
        if chunked
        else f"Content-Length: {len(body) if body is not None else length}"
    )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Connection: close\r\n{framing}\r\n\r\n"
    ).encode()
    if body is None:
        return head
    if chunked:
        return head + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    return head + body


def answer(port: int, raw: bytes, timeout_s: float = 20) -> bytes:
    """Everything the server sends back for ``raw`` on a fresh connection (b"" if it sends
    nothing within ``timeout_s``)."""
    with connect(port) as sock:
        sock.settimeout(timeout_s)
        with contextlib.suppress(OSError):  # refused before all was read: its answer is there
            sock.sendall(raw)
        try:
            return read_to_end(sock)
        except TimeoutError:
            return b""


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def refused_by_length(port: int) -> bool:
    """Whether a 300 kB body is refused on its Content-Length now (it is never sent: a server
    with room waits for it, and this gives up after a second)."""
    return status(answer(port, request(INFER, None, 300_000), timeout_s=1)) == 503


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = make_model_repo(tmp_path_factory.mktemp("budget"), lecture=False)
    settings = Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        poll_interval_s=0,
        max_request_bytes=BUDGET,
        max_body_bytes_in_flight=BUDGET,
    )
    with running_server(settings) as running:
        yield running


def test_the_budget_counts_what_is_taken_and_refuses_past_its_limit() -> None:
    budget = BodyBudget(100)
    budget.take(60)
    assert budget.refusal(40) is None
    with pytest.raises(BodyBudgetFull, match="maximum of 100 bytes"):
        budget.take(41)
    assert budget.held == 60  # a refused take counts nothing
    budget.give(60)
    budget.take(100)
    assert budget.held == 100
    unlimited = BodyBudget(0)
    unlimited.take(1 << 40)
    assert unlimited.refusal(1 << 40) is None


def test_a_budget_smaller_than_one_largest_body_is_a_settings_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="at least MAX_REQUEST_BYTES"):
        Settings(model_repository=tmp_path, max_request_bytes=2048, max_body_bytes_in_flight=1024)
    assert (
        Settings(model_repository=tmp_path, max_body_bytes_in_flight=0).max_body_bytes_in_flight
        == 0
    )


def hold(port: int, body: bytes) -> socket.socket:
    """A connection that has sent its head and ``HELD`` bytes of ``body``, and waits."""
    sock = connect(port)
    sock.sendall(request(INFER, body)[: -(len(body) - HELD)])
    wait_until(lambda: refused_by_length(port), 20, "the held bytes counted")
    return sock


def test_bodies_past_the_budget_are_refused_while_small_requests_are_served(
    server: Running,
) -> None:
    port = server.rest_port
    body = infer_body(900_000)
    with hold(port, body) as holder:
        refused = answer(port, request(INFER, None, 300_000))
        head, _, error = refused.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), refused
        assert b"retry-after: 1" in head and b"connection: close" in head
        assert json.loads(error) == {
            "error": f"the server holds its maximum of {BUDGET} bytes of request bodies; "
            "retry shortly"
        }
        # The app's routes share the budget; a chunked body is refused as its bytes arrive.
        assert status(answer(port, request(PREDICT, predict_body(300_000)))) == 503
        assert status(answer(port, request(INFER, infer_body(300_000), chunked=True))) == 503
        # What fits beside the held bytes is served.
        assert status(answer(port, request(INFER, infer_body(100_000)))) == 200
        assert status(answer(port, request(PREDICT, predict_body(100_000)))) == 200
        holder.sendall(body[HELD:])
        assert status(read_to_end(holder)) == 200
    # Every refused or answered body gave its bytes back: the whole budget is free again.
    assert status(answer(port, request(INFER, infer_body(BUDGET)))) == 200
    assert status(answer(port, request(PREDICT, predict_body(BUDGET), chunked=True))) == 200


def test_a_client_that_leaves_mid_body_gives_its_bytes_back(server: Running) -> None:
    port = server.rest_port
    holder = hold(port, infer_body(900_000))
    holder.close()
    wait_until(
        lambda: status(answer(port, request(INFER, infer_body(BUDGET)))) == 200,
        20,
        "the budget free again",
    )


def grpc_infer(images: int) -> Any:
    """A valid ModelInfer request of ``images`` zero images for the tiny model."""
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8", shape=[images, 32, 32, 3]
    )
    message = service_pb2.ModelInferRequest(model_name="tiny", inputs=[tensor])
    message.raw_input_contents.append(bytes(images * 3072))
    return message


def test_grpc_inference_messages_count_in_the_same_budget(server: Running) -> None:
    large, small = grpc_infer(100), grpc_infer(1)  # 307 kB and 3 kB
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with hold(server.rest_port, infer_body(900_000)):
            with pytest.raises(grpc.RpcError) as failure:
                stub.ModelInfer(large, timeout=30)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"maximum of {BUDGET} bytes" in (failure.value.details() or "")
            assert list(stub.ModelInfer(small, timeout=30).outputs[0].shape) == [1, 10]
            answers = list(stub.ModelStreamInfer(iter([large, small]), timeout=30))
            errors = sorted(a.error_message for a in answers)
            assert errors[0] == "" and f"maximum of {BUDGET} bytes" in errors[1]
        wait_until(lambda: answered(stub, large), 20, "the budget free again")


def answered(stub: Any, message: Any) -> bool:
    try:
        return list(stub.ModelInfer(message, timeout=30).outputs[0].shape) == [100, 10]
    except grpc.RpcError:
        return False
