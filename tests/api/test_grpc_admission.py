"""The gRPC calls' places (``admission``): working places while a call has work, waiting ones
while it has sent nothing, the longest waiting ended to make room, a unary call's message due
within its time. Real servers: ``tests/reliability/test_grpc_idle_calls.py``."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator

import pytest

from service.api.grpc.admission import EVICTED, Admission, StreamPlace
from service.core.errors import InvalidInput, Overloaded, RequestTimeout, TooManyCalls


async def never() -> AsyncIterator[str]:
    await asyncio.Event().wait()
    yield "never"


async def one(message: str) -> AsyncIterator[str]:
    yield message


async def none() -> AsyncIterator[str]:
    messages: tuple[str, ...] = ()  # the client's end, before any message
    for message in messages:
        yield message


def test_a_stream_holds_a_working_place_only_while_it_has_requests_in_flight() -> None:
    admission = Admission(most_working=1, most_waiting=8, message_timeout_s=30)
    first, second = (StreamPlace(admission, lambda: None) for _ in range(2))
    assert (admission.working, admission.waiting) == (0, 2)
    assert first.start() and first.start()  # two requests in flight, one place
    assert (admission.working, admission.waiting) == (1, 1)
    assert not second.start()  # none free: answered so, not run
    with pytest.raises(TooManyCalls, match="working on 1 gRPC calls"):
        admission.take()
    first.finish()
    assert admission.working == 1  # one still in flight
    first.finish()
    second.finish()  # its refusal sent
    assert (admission.working, admission.waiting) == (0, 2)
    first.close()
    second.close()
    assert (admission.working, admission.waiting) == (0, 0)


def test_past_its_waiting_places_the_call_that_waited_longest_is_ended() -> None:
    admission = Admission(most_working=0, most_waiting=2, message_timeout_s=30)
    ended: list[int] = []
    places = [StreamPlace(admission, functools.partial(ended.append, i)) for i in range(4)]
    assert ended == [0, 1] and [p.evicted for p in places] == [True, True, False, False]
    places[2].start()
    places[2].finish()  # waiting again: now the newest
    StreamPlace(admission, lambda: ended.append(4))
    assert ended == [0, 1, 3]
    places[0].start()  # an ended stream's last answer, computed before its close
    places[0].finish()
    assert admission.waiting == 2 and ended == [0, 1, 3]  # it waits for nothing: no one ended


def test_a_unary_calls_message_is_awaited_within_its_time_and_its_place() -> None:
    async def scenario() -> None:
        admission = Admission(most_working=0, most_waiting=1, message_timeout_s=0.1)
        assert await admission.first_message(one("hello")) == "hello"
        with pytest.raises(InvalidInput, match="without its request message"):
            await admission.first_message(none())
        with pytest.raises(RequestTimeout, match=r"did not arrive within 0\.1 s"):
            await admission.first_message(never())
        waiting = asyncio.ensure_future(admission.first_message(never()))
        await asyncio.sleep(0.01)
        pushed = asyncio.ensure_future(admission.first_message(one("pushed it out")))
        assert await pushed == "pushed it out"
        with pytest.raises(Overloaded, match=EVICTED[:40]):
            await waiting
        assert admission.waiting == 0

    asyncio.run(scenario())
