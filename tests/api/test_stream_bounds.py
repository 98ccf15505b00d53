"""``serve_stream``'s bounds, with a plain coroutine as each request's answer: at most
``GRPC_STREAM_IN_FLIGHT`` requests run at once, a client that reads no answers stops the stream
reading, and one failing request is answered with its error while the rest go on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from tritonclient.grpc import service_pb2

from service.api.grpc.stream import REFUSED_IN_A_ROW, SMALL_MESSAGE_BYTES, serve_stream
from service.core.errors import (
    InvalidInput,
    ModelNotFound,
    Overloaded,
    PayloadTooLarge,
    RequestTimeout,
    ServingError,
    TimeoutExpired,
    TooManyCalls,
)
from service.dataplane.dataplane import DataPlane
from tests.support.apps import make_settings
from tests.support.models import make_model_repo

CAP = 4


def status(_: int) -> grpc.StatusCode:
    return grpc.StatusCode.INVALID_ARGUMENT


@pytest.fixture
def plane(tmp_path: Path) -> DataPlane:
    return DataPlane(make_settings(make_model_repo(tmp_path), grpc_stream_in_flight=CAP))


class Counting:
    """Requests numbered 0..count-1, how many were read, and the most answered at once."""

    def __init__(self, count: int) -> None:
        self.count, self.read, self.running, self.most = count, 0, 0, 0

    async def requests(self) -> AsyncIterator[Any]:
        for i in range(self.count):
            self.read += 1
            yield service_pb2.ModelInferRequest(id=str(i))

    async def answer(self, request: Any) -> Any:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.001)
        self.running -= 1
        if request.id == "7":
            raise InvalidInput("request 7 is bad")
        return service_pb2.ModelInferResponse(id=request.id), 0


@pytest.mark.anyio
async def test_at_most_the_cap_run_at_once_and_a_bad_one_fails_alone(plane: DataPlane) -> None:
    counting = Counting(200)
    stream = serve_stream(plane, counting.requests(), status, answer=counting.answer)
    answers = [a async for a in stream]
    assert len(answers) == 200 and counting.most == CAP
    errors = [a for a in answers if a.error_message]
    assert [(a.error_message, a.infer_response.id) for a in errors] == [("request 7 is bad", "7")]


@pytest.mark.anyio
async def test_a_client_reading_no_answers_stops_the_stream_reading(plane: DataPlane) -> None:
    counting = Counting(10_000)
    stream = serve_stream(plane, counting.requests(), status, answer=counting.answer)
    first = await anext(stream)  # then the client reads nothing more
    await asyncio.sleep(0.2)
    assert first.infer_response.id == "0"
    assert counting.read <= CAP + 2  # not 10,000 buffered
    await stream.aclose()  # the client goes away: nothing keeps running
    await asyncio.sleep(0.01)
    assert counting.running == 0


class Invalid(Counting):
    """Every request refused with ``error``, but those whose id is a multiple of
    ``valid_every`` or at least ``valid_from``; each message ``padding`` bytes or more."""

    def __init__(
        self,
        count: int,
        valid_every: int = 0,
        valid_from: int | None = None,
        error: type[ServingError] = InvalidInput,
        padding: int = 0,
    ) -> None:
        super().__init__(count)
        self.valid_every, self.valid_from = valid_every, valid_from
        self.error, self.padding = error, padding
        self.started, self.refusal_s = 0, 0.0

    async def requests(self) -> AsyncIterator[Any]:
        async for request in super().requests():
            request.raw_input_contents.append(b"\0" * self.padding)
            yield request

    async def answer(self, request: Any) -> Any:
        self.started += 1
        number = int(request.id)
        if (self.valid_every and number % self.valid_every == 0) or (
            self.valid_from is not None and number >= self.valid_from
        ):
            await asyncio.sleep(0.01)  # run by a model: slower than a refusal
            return service_pb2.ModelInferResponse(id=request.id), 0
        await asyncio.sleep(self.refusal_s * (number % CAP + 1))  # staggered, if at all
        raise self.error(f"request {request.id} is bad")


@pytest.mark.anyio
async def test_a_stream_of_invalid_requests_ends_after_so_many_in_a_row(plane: DataPlane) -> None:
    """Each costs the loop about 50 us however small: 13,000 fit one 65 kB DATA frame."""
    invalid = Invalid(10_000)
    answers = []
    with pytest.raises(InvalidInput, match=f"{REFUSED_IN_A_ROW} requests in a row were refused"):
        async for answer in serve_stream(plane, invalid.requests(), status, answer=invalid.answer):
            answers.append(answer)
    assert REFUSED_IN_A_ROW <= len(answers) < REFUSED_IN_A_ROW + CAP
    assert all(a.error_message.endswith("is bad") for a in answers)
    assert invalid.read < REFUSED_IN_A_ROW + 2 * CAP  # not 10,000 read and answered


@pytest.mark.anyio
async def test_invalid_requests_between_valid_ones_never_end_the_stream(plane: DataPlane) -> None:
    """Counted in the order sent: quick refusals answered before a slower valid request sent
    ahead of them are not a run."""
    invalid = Invalid(200, valid_every=REFUSED_IN_A_ROW - 1)
    stream = serve_stream(plane, invalid.requests(), status, answer=invalid.answer)
    answers = [a async for a in stream]
    assert len(answers) == 200
    assert sum(not a.error_message for a in answers) == len(range(0, 200, REFUSED_IN_A_ROW - 1))


@pytest.mark.parametrize("error", [Overloaded, RequestTimeout, TooManyCalls, TimeoutExpired])
@pytest.mark.anyio
async def test_refusals_for_the_servers_state_never_end_the_stream(
    plane: DataPlane, error: type[ServingError]
) -> None:
    invalid = Invalid(100, error=error)
    answers = [
        a async for a in serve_stream(plane, invalid.requests(), status, answer=invalid.answer)
    ]
    assert len(answers) == 100


@pytest.mark.anyio
async def test_refusals_of_larger_messages_never_end_the_stream(plane: DataPlane) -> None:
    """A model being reloaded answers 404 to valid requests; a message of a kilobyte or more
    costs the server no more a byte than a served one."""
    invalid = Invalid(100, error=ModelNotFound, padding=SMALL_MESSAGE_BYTES)
    answers = [
        a async for a in serve_stream(plane, invalid.requests(), status, answer=invalid.answer)
    ]
    assert len(answers) == 100


@pytest.mark.anyio
async def test_requests_read_before_the_end_are_answered_and_the_last_refusal_named(
    plane: DataPlane,
) -> None:
    invalid = Invalid(10_000, valid_from=REFUSED_IN_A_ROW, error=PayloadTooLarge)
    invalid.refusal_s = 0.003  # so that valid requests are read while the last refusals run
    answers = []
    with pytest.raises(InvalidInput, match="the last: request 15 is bad; the stream ends"):
        async for answer in serve_stream(plane, invalid.requests(), status, answer=invalid.answer):
            answers.append(answer)
    assert len(answers) == invalid.started > REFUSED_IN_A_ROW  # the valid ones begun answered
    assert invalid.running == 0


@pytest.mark.anyio
async def test_a_client_that_ends_with_its_16th_refusal_ends_the_stream_itself(
    plane: DataPlane,
) -> None:
    invalid = Invalid(REFUSED_IN_A_ROW)
    answers = [
        a async for a in serve_stream(plane, invalid.requests(), status, answer=invalid.answer)
    ]
    assert len(answers) == REFUSED_IN_A_ROW
