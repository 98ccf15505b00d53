"""The bytes of request bodies one process holds at once (MAX_BODY_BYTES_IN_FLIGHT), on a real
server: while two clients hold most of the budget with large bodies they have partly sent, a
large body that would pass the large bodies' room is refused 503 with Retry-After (by its
Content-Length before any of it is read; a chunked one as its bytes arrive), a gRPC inference
message UNAVAILABLE (alone, or on a stream that goes on), small requests are still answered from
the eighth kept for them, and the budget is whole again once the holders finish or leave."""

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

from service.core.body_budget import BodyBudget, least_budget
from service.core.errors import BodyBudgetFull
from service.settings import Settings
from tests.support.models import make_model_repo
from tests.support.servers import Running, running_server, wait_until
from tests.support.sockets import connect, exchange, read_to_end

MIB = 1 << 20
LARGEST = 4 * MIB  # MAX_REQUEST_BYTES
BUDGET = 8 * MIB  # large bodies may hold 7 MiB of it, small ones (up to 1 MiB each) all of it
HOLDING = 7 * MIB // 2  # the body of each of two holding clients: both fit in the large room
HELD = 3 * MIB + MIB // 4  # what each of them sends of it, then waits
REFUSED = 1_200_000  # a large body: 7.7 MiB with the held bytes, past the large bodies' room
SMALL = 900_000  # 7.4 MiB with them: past that room, within the whole budget
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


def status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else 0


def refused_by_length(port: int) -> bool:
    """Whether a large body is refused on its Content-Length now (it is never sent: a server
    with room waits for it, and this gives up after a second)."""
    return status(exchange(port, request(INFER, None, REFUSED), timeout_s=1)) == 503


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    repo = make_model_repo(tmp_path_factory.mktemp("budget"), lecture=False)
    settings = Settings(
        model_repository=repo,
        providers=["CPUExecutionProvider"],
        poll_interval_s=0,
        max_request_bytes=LARGEST,
        max_body_bytes_in_flight=BUDGET,
    )
    with running_server(settings) as running:
        yield running


def test_the_budget_counts_what_is_taken_and_keeps_an_eighth_for_small_bodies() -> None:
    budget = BodyBudget(8 * MIB)
    budget.take(3 * MIB, 3 * MIB)
    budget.take(3 * MIB, 3 * MIB)
    assert budget.refusal(MIB, 2 * MIB) is None  # a large body to 7 MiB: the room's edge
    with pytest.raises(BodyBudgetFull, match=f"maximum of {8 * MIB} bytes"):
        budget.take(MIB + 1, 2 * MIB)
    assert budget.held == 6 * MIB  # a refused take counts nothing
    budget.take(MIB, MIB)  # small bodies may take the last eighth
    budget.take(MIB, MIB)
    assert budget.refusal(1, 1) is not None and budget.held == 8 * MIB
    budget.give(8 * MIB)
    assert budget.held == 0
    unlimited = BodyBudget(0)
    unlimited.take(1 << 40, 1 << 40)
    assert unlimited.refusal(1 << 40, 1 << 40) is None


@pytest.mark.parametrize("largest", [1024, 1_000_000, 64 * MIB, 1_234_567])
def test_the_least_budget_holds_one_largest_body_beside_the_eighth(largest: int) -> None:
    least = least_budget(largest)
    assert BodyBudget(least).refusal(largest, largest) is None
    assert BodyBudget(least - 1).refusal(largest, largest) is not None


def test_a_budget_without_room_for_one_largest_body_is_a_settings_error(tmp_path: Path) -> None:
    least = least_budget(LARGEST)  # 4 MiB in the large bodies' seven eighths
    with pytest.raises(ValidationError, match=f"at least {least}"):
        Settings(
            model_repository=tmp_path, max_request_bytes=LARGEST, max_body_bytes_in_flight=LARGEST
        )
    for allowed in (0, least):
        settings = Settings(
            model_repository=tmp_path, max_request_bytes=LARGEST, max_body_bytes_in_flight=allowed
        )
        assert settings.max_body_bytes_in_flight == allowed


def hold(port: int, body: bytes) -> socket.socket:
    """A connection that has sent its head and ``HELD`` bytes of ``body``, and waits."""
    sock = connect(port)
    sock.sendall(request(INFER, body)[: -(len(body) - HELD)])
    return sock


@contextlib.contextmanager
def two_holders(port: int) -> Iterator[tuple[socket.socket, socket.socket, bytes]]:
    """Two connections holding ``HELD`` bytes each of a ``HOLDING`` body, both counted."""
    body = infer_body(HOLDING)
    with hold(port, body) as first, hold(port, body) as second:
        wait_until(lambda: refused_by_length(port), 20, "the held bytes counted")
        yield first, second, body


def test_large_bodies_past_their_room_are_refused_while_small_ones_are_served(
    server: Running,
) -> None:
    port = server.rest_port
    with two_holders(port) as (first, second, body):
        refused = exchange(port, request(INFER, None, REFUSED))
        head, _, error = refused.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503"), refused
        assert b"retry-after: 1" in head and b"connection: close" in head
        assert json.loads(error) == {
            "error": f"the server holds its maximum of {BUDGET} bytes of request bodies; "
            "retry shortly"
        }
        # The app's routes share the budget; a chunked body is refused as its bytes arrive.
        assert status(exchange(port, request(PREDICT, predict_body(REFUSED)))) == 503
        assert status(exchange(port, request(INFER, infer_body(REFUSED), chunked=True))) == 503
        # Small bodies are served from the eighth kept for them.
        assert status(exchange(port, request(INFER, infer_body(SMALL)))) == 200
        assert status(exchange(port, request(PREDICT, predict_body(SMALL), chunked=True))) == 200
        for holder in (first, second):
            holder.sendall(body[HELD:])
            assert status(read_to_end(holder)) == 200
    # Every refused or answered body gave its bytes back: the whole budget is free again.
    assert status(exchange(port, request(INFER, infer_body(LARGEST)))) == 200
    assert status(exchange(port, request(PREDICT, predict_body(LARGEST), chunked=True))) == 200


def test_clients_that_leave_mid_body_give_their_bytes_back(server: Running) -> None:
    port = server.rest_port
    with two_holders(port):
        pass  # both close here, their bodies unfinished
    wait_until(
        lambda: status(exchange(port, request(INFER, infer_body(LARGEST)))) == 200,
        20,
        "the budget free again",
    )
    assert not refused_by_length(port)


def grpc_infer(images: int) -> Any:
    """A valid ModelInfer request of ``images`` zero images for the tiny model."""
    tensor = service_pb2.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8", shape=[images, 32, 32, 3]
    )
    message = service_pb2.ModelInferRequest(model_name="tiny", inputs=[tensor])
    message.raw_input_contents.append(bytes(images * 3072))
    return message


def answered(stub: Any, message: Any) -> bool:
    try:
        reply = stub.ModelInfer(message, timeout=30)
    except grpc.RpcError:
        return False
    return list(reply.outputs[0].shape) == [message.inputs[0].shape[0], 10]


def test_grpc_inference_messages_count_in_the_same_budget(server: Running) -> None:
    large, small = grpc_infer(REFUSED // 3072 + 1), grpc_infer(SMALL // 3072)
    with grpc.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with two_holders(server.rest_port):
            with pytest.raises(grpc.RpcError) as failure:
                stub.ModelInfer(large, timeout=30)
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            assert f"maximum of {BUDGET} bytes" in (failure.value.details() or "")
            assert answered(stub, small)
            answers = list(stub.ModelStreamInfer(iter([large, small]), timeout=30))
            errors = sorted(a.error_message for a in answers)
            assert errors[0] == "" and f"maximum of {BUDGET} bytes" in errors[1]
        wait_until(lambda: answered(stub, large), 20, "the budget free again")
