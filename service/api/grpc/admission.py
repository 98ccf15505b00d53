"""Which gRPC calls hold the server's places (``GRPC_MAX_CONCURRENT_RPCS``), and what a call that
sends nothing may hold.

grpc's own limit (``maximum_concurrent_rpcs``) counts a call from its headers. A call that then
sends no message holds its place for as long as its client likes: 1,024 of them (a stream that
never yields, or a unary method called as one, over 11 connections) kept every other gRPC client
at RESOURCE_EXHAUSTED until their connections' age ran out, 5.5 minutes, and the client opens
them again. Here a call holds a place only while it has work: a unary call from its message to
its answer, a stream while its answers are computed. While a call waits for a message it is
*waiting*: a unary call for at most ``message_timeout_s`` (``BODY_TIMEOUT_S``, as a REST body),
and at most ``most_waiting`` calls wait at once, the one that has waited longest being ended
(UNAVAILABLE) to make room for the next, so calls that send nothing cannot keep out those that do.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

from service.core.errors import InvalidInput, Overloaded, RequestTimeout, ServingError, TooManyCalls

T = TypeVar("T")
Behaviour = Callable[[Any, Any], Awaitable[Any]]  # (request, context) -> response
Refuse = Callable[[ServingError, Any], Awaitable[NoReturn]]  # (why, context): ends the call

EVICTED = (
    "the server ended this call to make room for others: it had waited longest of the calls "
    "that have sent no request yet; retry"
)


class Admission:
    """The places of one process's gRPC calls: ``most_working`` with work (0: no limit), and
    ``most_waiting`` waiting for a message. Touched on the event loop only; a unary call's wait
    costs no timer of its own (a sweep, armed while such calls wait, ends those past their time:
    a timer per call cost each call about 20 us)."""

    def __init__(self, most_working: int, most_waiting: int, message_timeout_s: float) -> None:
        self.most_working, self.most_waiting = most_working, most_waiting
        self.message_timeout_s = message_timeout_s
        self.working = 0
        # waiting calls, oldest first: a unary call's task and when it is due, or a StreamPlace
        self._waiting: dict[object, float] = {}
        self._ended: dict[asyncio.Task[Any], ServingError] = {}  # why a task was cancelled
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def wait(self, key: object, due: float = math.inf) -> None:
        """``key`` waits for a message from now (until ``due``, on the loop's clock); past
        ``most_waiting`` the call that has waited longest is ended to make room."""
        waiting = self._waiting
        waiting.pop(key, None)
        waiting[key] = due
        while len(waiting) > self.most_waiting:
            oldest = next(iter(waiting))
            del waiting[oldest]
            self._end(oldest, Overloaded(EVICTED))

    def done_waiting(self, key: object) -> None:
        self._waiting.pop(key, None)

    def _end(self, key: object, why: ServingError) -> None:
        if isinstance(key, StreamPlace):
            key.evict()
        elif isinstance(key, asyncio.Task):
            self._ended[key] = why
            key.cancel()

    def _swept(self) -> None:
        """End the unary calls past their time; again in a while if any still wait."""
        self._sweep = None
        loop = asyncio.get_running_loop()
        now, waiting = loop.time(), self._waiting
        late = f"the request message did not arrive within {self.message_timeout_s:g} s"
        for key in [key for key, due in waiting.items() if due <= now]:
            del waiting[key]
            self._end(key, RequestTimeout(late))
        if any(due != math.inf for due in waiting.values()):
            self._sweep = loop.call_later(self._sweep_s, self._swept)

    @property
    def _sweep_s(self) -> float:
        return min(1.0, self.message_timeout_s / 4)

    def try_take(self) -> bool:
        """A working place, if one is free."""
        if self.most_working and self.working >= self.most_working:
            return False
        self.working += 1
        return True

    def take(self) -> None:
        if not self.try_take():
            raise self.too_many()

    def too_many(self) -> TooManyCalls:
        """Why a call (or a stream's request) that found no working place is refused."""
        return TooManyCalls(
            f"the server is working on {self.most_working} gRPC calls, its limit "
            "(GRPC_MAX_CONCURRENT_RPCS); retry shortly"
        )

    def give(self) -> None:
        self.working -= 1

    async def first_message(self, messages: AsyncIterator[T]) -> T:
        """A unary call's message, awaited as a waiting call: ``RequestTimeout`` when it has
        not come within ``message_timeout_s``, ``Overloaded`` when its place was needed."""
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        self.wait(task, loop.time() + self.message_timeout_s)
        if self._sweep is None:
            self._sweep = loop.call_later(self._sweep_s, self._swept)
        cancelling = task.cancelling()
        try:
            return await anext(messages)
        except StopAsyncIteration:
            raise InvalidInput("the call ended without its request message") from None
        except asyncio.CancelledError:
            why = self._ended.pop(task, None)
            if why is not None and task.uncancel() <= cancelling:  # ours, not a shutdown's too
                raise why from None
            raise
        finally:
            self._waiting.pop(task, None)
            self._ended.pop(task, None)  # ended as its message came: the cancel lands later


def unary(
    admission: Admission, behaviour: Behaviour, refuse: Refuse, release: Callable[[Any], None]
) -> Behaviour:
    """``behaviour`` (a unary method's) as a call grpc binds as client-streaming, so that the
    wait for its one message is ours to bound: admitted when its message has come and a working
    place is free, else refused (``refuse``: the call's status, counted). Its message is
    ``release``d when the call is done with it (grpc's iterator keeps it until a collection)."""

    async def call(messages: AsyncIterator[Any], context: Any) -> Any:
        request = None
        try:
            request = await admission.first_message(messages)
            admission.take()
        except ServingError as why:
            release(request)
            await refuse(why, context)
        try:
            return await behaviour(request, context)
        finally:
            admission.give()
            release(request)

    return call


class StreamPlace:
    """One stream's standing: waiting while it has no answer being computed (ended, ``end`` called,
    if its place is needed; never for its time: a client may keep a stream open between
    requests), holding a working place while it has."""

    def __init__(self, admission: Admission, end: Callable[[], object]) -> None:
        self.admission, self._end = admission, end
        self.in_flight = 0
        self.holds = False  # a working place
        self.evicted = False
        admission.wait(self)

    def evict(self) -> None:
        self.evicted = True
        self._end()

    def start(self) -> bool:
        """A request of the stream has been read: True when it may run (a working place held or
        taken), False when none is free (it is answered so, not run)."""
        self.in_flight += 1
        if not self.holds:
            if not self.admission.try_take():
                return False
            self.holds = True
            self.admission.done_waiting(self)
        return True

    def finish(self) -> None:
        """A request's answer is ready (sent or not: sending waits on the client)."""
        self.in_flight -= 1
        if not self.in_flight:
            self._release()
            if not self.evicted:  # an ended stream waits for nothing (its close is coming)
                self.admission.wait(self)

    def close(self) -> None:
        self._release()
        self.admission.done_waiting(self)

    def _release(self) -> None:
        if self.holds:
            self.admission.give()
            self.holds = False
