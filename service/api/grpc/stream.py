"""``ModelStreamInfer``: Triton's bidirectional inference stream (``tritonclient.grpc``'s
``start_stream`` / ``async_stream_infer``). Each request on the stream gets one answer on it, in
the order they finish: its ``infer_response`` (the request ``id`` echoed) or its
``error_message``; a bad request fails alone and the stream goes on, unless it is the
``REFUSED_IN_A_ROW``th small one in a row refused for what the client sent. Up to ``limit``
requests of one stream run at once; past that the stream stops reading until an answer has
been sent, so a client that floods it meets HTTP/2 flow control, not an unbounded buffer."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from tritonclient.grpc import service_pb2

from service.api.grpc import codec, wire
from service.api.grpc.admission import EVICTED, Admission, StreamPlace
from service.api.grpc.handlers import SizedRequest, Undecodable, lenient_parser, release
from service.core.body_budget import BodyBudget
from service.core.errors import InvalidInput, ModelNotFound, Overloaded, ServingError
from service.core.limits import MAX_ELEMENTS, MAX_NAME_CHARS
from service.dataplane.dataplane import DataPlane, request_scope
from service.dataplane.trace_settings import grpc_carrier, step
from service.dataplane.types import InferResponse
from service.engine.work_pool import TooHeavyForTheLoop, on_event_loop

log = logging.getLogger(__name__)

INTERNAL_MESSAGE = "internal server error"
# A request's answer and the bytes of it counted in the body budget until it is sent (a large
# answer's, ``BodyBudget.take_answer``: a client that does not read held them unbounded)
Answered = tuple[Any, int]
Answer = Callable[[Any], Awaitable[Answered]]
StatusOf = Callable[[int], grpc.StatusCode]  # an HTTP status as a gRPC code (servicer's mapping)
INFER_REQUEST = service_pb2.ModelInferRequest
PARSE_INFER_REQUEST = lenient_parser(INFER_REQUEST, counted=False)  # counted by the model's bound
_END = object()  # the reader has seen the end of the requests and every answer is queued
# A stream's small requests in a row refused for what the client sent (a 4xx, but a timeout's
# or too many requests') that end it: each costs 50-130 us of the loop however small (13,000
# empty 5-byte ones fit a 65 kB DATA frame), where a new stream or call costs its headers too;
# a client's bug shows in the first answers anyway. A larger message costs the server no more a
# byte than a served one (about 0.2 us), so its refusal, a model being reloaded's 404 for one,
# never counts.
REFUSED_IN_A_ROW = 16
SMALL_MESSAGE_BYTES = 1024


async def infer_message(plane: DataPlane, received: Any, metadata: Any = None) -> Answered:
    """One ``ModelInferRequest`` (a ``SizedRequest``) answered as a ``ModelInferResponse``
    (``ModelInfer`` and each request of a stream), its message's bytes counted in the process's
    body budget until then, the answer's from then until the caller has sent it
    (UNAVAILABLE past it); traced when sampled (the call's ``traceparent`` metadata its
    parent)."""
    if isinstance(received, Undecodable):
        raise InvalidInput(f"the request is not a valid {received.message} message")
    budget = plane.body_budget
    budget.take(received.size, received.size)
    try:
        if received.message is None:
            received.message = await counted(plane, received.data)
            received.data = b""  # the message holds its own copy
        return await _answer(plane, received.message, metadata)
    finally:
        budget.give(received.size)


async def counted(plane: DataPlane, data: bytes) -> Any:
    """A large message parsed once its fields are counted against what the model it names can
    take (``wire``): on the loop up to ``LOOP_FIELDS`` fields and ``LOOP_PARSE_BYTES``, on the
    work pool past them. A model named in its head is looked up first (404 before any count)."""
    start = wire.head(data)
    if start.name_bytes:
        raise ModelNotFound(
            f"unknown model: a name of {start.name_bytes} bytes, longer than any model's "
            f"({MAX_NAME_CHARS} characters)"
        )
    max_rows = plane.settings.max_images_per_request
    most = wire.FIELD_SLACK + max_rows  # no model named where serializers put it
    if start.model_name:
        runtime = plane.model(start.model_name, start.model_version or None)
        most = wire.most_fields(runtime.card.inputs, runtime.value_bounds(max_rows), max_rows)
    light = len(data) <= wire.LOOP_PARSE_BYTES
    try:
        message = await plane.work.run_here_if_light(light, _counted_parse, data, most)
    except wire.TooManyFields:
        raise wire.refusal(start.model_name, most) from None
    if isinstance(message, Undecodable):
        raise InvalidInput(f"the request is not a valid {message.message} message")
    return message


def _counted_parse(data: bytes, most: int) -> Any:
    """``data`` parsed once counted: on the loop only ``LOOP_FIELDS`` are counted
    (``TooHeavyForTheLoop`` past them); where ``most`` allows every field the bytes can hold
    (a BYTES input without bounds), the pool parses without counting."""
    here = on_event_loop()
    try:
        if here:
            wire.count_fields(data, min(most, wire.LOOP_FIELDS))
        elif most < len(data) // 2:
            wire.count_fields(data, most)
    except wire.TooManyFields:
        if here and most > wire.LOOP_FIELDS:
            raise TooHeavyForTheLoop from None
        raise
    except wire.Malformed:
        return Undecodable(INFER_REQUEST.DESCRIPTOR.name)
    return PARSE_INFER_REQUEST(data)


async def _answer(plane: DataPlane, request: Any, metadata: Any) -> Answered:
    runtime = plane.model(request.model_name, request.model_version or None)
    settings = plane.settings
    # A model without a batch axis has no rows to bound: the element limit does.
    max_rows = settings.max_images_per_request if runtime.batched else MAX_ELEMENTS
    elements = runtime.value_bounds(max_rows, bytes_elements=True)
    codec.check_value_counts(request, runtime.value_bounds(max_rows), max_rows, elements)
    light = codec.python_decode_bytes(request) <= settings.inline_decode_bytes
    decode = codec.decode_infer_request
    with plane.trace_settings.request(runtime.name, grpc_carrier(metadata)):
        with step("decode"):
            infer = await plane.work.run_here_if_light(light, decode, request, max_rows)
        response = await plane.infer(runtime, infer)
        with step("encode"):
            return await _encoded(plane, response)


async def _encoded(plane: DataPlane, response: InferResponse) -> Answered:
    """The answer as a message, or over ``INLINE_DECODE_BYTES`` (or holding BYTES outputs, whose
    size is known once written) serialized on the pool (handlers pass bytes on); its bytes
    counted in the body budget (those known before it is written, else once written)."""
    budget = plane.body_budget
    size = codec.answer_bytes(response)
    held = 0 if size is None else budget.take_answer(size)
    try:
        if size is not None and size <= plane.settings.inline_decode_bytes:
            return codec.encode_infer_response(response), held
        encoded = await plane.work.run(codec.encode_infer_response_bytes, response)
        if size is None:
            held = budget.take_answer(len(encoded))
        return encoded, held
    except BaseException:
        budget.give(held)
        raise


def error_response(request: Any, message: str) -> Any:
    """The stream's answer to a request that failed: its id and model, and why."""
    response = service_pb2.ModelStreamInferResponse(error_message=message)
    if isinstance(request, SizedRequest):  # one not parsed yet: what its head names
        request = request.message if request.message is not None else wire.head(request.data)
    if not isinstance(request, Undecodable):  # names past their limits are no model's: cut
        answer = response.infer_response
        answer.id, answer.model_name = request.id, request.model_name[:MAX_NAME_CHARS]
        answer.model_version = request.model_version[: wire.MAX_VERSION_CHARS]
    return response


async def answer_one(
    plane: DataPlane, request: Any, answer: Answer, status: StatusOf
) -> tuple[Answered, str | None]:
    """``request``'s stream message: its answer, or its error in words (counted as a call),
    and why it was refused for what the client sent, if it was."""
    start = time.perf_counter()
    code = grpc.StatusCode.OK
    try:
        with request_scope():  # each request holds its model version until it is answered
            result, held = await answer(request)
        if isinstance(result, bytes):  # serialized on the pool: a large answer
            return (codec.stream_response_bytes(result), held), None
        return (service_pb2.ModelStreamInferResponse(infer_response=result), held), None
    except ServingError as exc:
        code = status(exc.status)
        internal = code is grpc.StatusCode.INTERNAL
        if internal:
            log.error("gRPC ModelStreamInfer request failed", exc_info=exc)
        refused = 400 <= exc.status < 500 and exc.status not in (408, 429)
        answered = error_response(request, INTERNAL_MESSAGE if internal else exc.message), 0
        return answered, exc.message if refused else None
    except Exception as exc:
        log.error("gRPC ModelStreamInfer request failed", exc_info=exc)
        code = grpc.StatusCode.INTERNAL
        return (error_response(request, INTERNAL_MESSAGE), 0), None
    finally:
        plane.metrics.observe_grpc_call("ModelStreamInfer", code.name, time.perf_counter() - start)


async def serve_stream(
    plane: DataPlane,
    requests: AsyncIterator[Any],
    status: StatusOf,
    metadata: Any = None,
    answer: Answer | None = None,
    admission: Admission | None = None,
) -> AsyncGenerator[Any, None]:
    """The stream's answers as they finish; at most ``GRPC_STREAM_IN_FLIGHT`` requests in flight
    or unsent at once. With ``admission``, it holds a working place while it has requests being
    answered (one that finds none free is answered so) and otherwise waits as a call sending
    nothing does, unsent answers too: ended with ``Overloaded`` when its place is needed."""
    answer = answer or (lambda request: infer_message(plane, request, metadata))
    done: asyncio.Queue[Any] = asyncio.Queue()
    slots = asyncio.Semaphore(plane.settings.grpc_stream_in_flight)
    running: set[asyncio.Task[None]] = set()
    refusals, finished = RefusedInARow(), False  # finished: every request of the client read

    async def run(request: Any, number: int) -> None:
        answered, refused = await answer_one(plane, request, answer, status)
        done.put_nowait(answered)
        release(request)  # grpc's iterator keeps the last one given (``release``)
        if place is not None:  # computed: a client that does not read holds no working place
            place.finish()
        if refusals.answered(number, _if_small(request, refused)) and not finished:
            reader.cancel()  # read no more; those read are answered, then the stream ends

    async def read() -> None:
        nonlocal finished
        try:
            async for request in requests:
                await slots.acquire()  # released when an answer has been sent
                if place is not None and not place.start():
                    done.put_nowait(_refused(plane, request, status, place.admission.too_many()))
                    place.finish()
                    continue
                running.add(task := asyncio.create_task(run(request, refusals.number())))
                task.add_done_callback(running.discard)
            finished = True
        finally:  # cut short too: what was read is answered (cancelled by ``_stop`` if need be)
            if running:
                await asyncio.wait(set(running))

    reader = asyncio.create_task(read())  # first run at the first await below, as is ``place``
    reader.add_done_callback(lambda _: done.put_nowait(_END))  # if cancelled before it ran too
    place = StreamPlace(admission, reader.cancel) if admission is not None else None
    try:
        while (item := await done.get()) is not _END:
            try:
                yield item[0]  # waits while the client does not read: at most ``limit`` answers
            finally:  # sent, or the stream closed while it was being sent
                plane.body_budget.give(item[1])
            slots.release()
        if (why := _cut_short(place, refusals.why if not finished else "")) is not None:
            raise why
        await reader  # the client's end of the stream, or its error (grpc ends the call)
    finally:
        if place is not None:
            place.close()
        await _stop(reader, running, done, plane.body_budget)


def _cut_short(place: StreamPlace | None, refused: str) -> ServingError | None:
    """Why a stream ends before its client ended it, if it does."""
    if place is not None and place.evicted:  # its place was needed while it sent nothing
        return Overloaded(EVICTED)
    if refused:
        return InvalidInput(
            f"{REFUSED_IN_A_ROW} requests in a row were refused, the last: {refused[:200]}; "
            "the stream ends"
        )
    return None


def _if_small(request: Any, refused: str | None) -> str | None:
    """Why a stream's request was refused, if it was and its message is small (an undecodable
    one counts as small; a SizedRequest keeps its size when let go)."""
    if isinstance(request, SizedRequest):
        size = request.size
    else:
        size = 0 if isinstance(request, Undecodable) else int(request.ByteSize())
    return refused if size < SMALL_MESSAGE_BYTES else None


class RefusedInARow:
    """A stream's refused requests in a row, in the order they came (a quick refusal answered
    before a slower good request sent ahead of it still follows it)."""

    def __init__(self) -> None:
        self._given = 0  # numbers given to requests read
        self._next = 0  # the first request whose answer is not yet counted
        self._waiting: dict[int, str | None] = {}  # answered, not yet counted: the in-flight
        self._in_a_row = 0
        self.why = ""  # the last refusal's message once the stream must end

    def number(self) -> int:
        self._given += 1
        return self._given - 1

    def answered(self, number: int, refused: str | None) -> bool:
        """True once, when the stream must end: REFUSED_IN_A_ROW refused requests in a row
        (``refused``: why, or None when answered or not to be counted)."""
        self._waiting[number] = refused
        while self._next in self._waiting:
            why = self._waiting.pop(self._next)
            self._in_a_row = self._in_a_row + 1 if why is not None else 0
            self._next += 1
            if self._in_a_row == REFUSED_IN_A_ROW and not self.why:
                self.why = why or "refused"
                return True
        return False


async def _stop(
    reader: asyncio.Task[None], running: set[asyncio.Task[None]], done: Any, budget: BodyBudget
) -> None:
    """The client went away, or the call ended: stop the stream's work; the answers it did not
    send are no longer held."""
    reader.cancel()
    for task in list(running):
        task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await reader
    if running:  # none may queue an answer after the count below
        await asyncio.wait(set(running))
    while not done.empty():
        if (item := done.get_nowait()) is not _END:
            budget.give(item[1])


def _refused(plane: DataPlane, request: Any, status: StatusOf, why: ServingError) -> Answered:
    """The answer to a stream's request that found no working place: not run (counted), its
    message let go."""
    plane.metrics.observe_grpc_call("ModelStreamInfer", status(why.status).name, 0.0)
    response = error_response(request, why.message)
    release(request)
    return response, 0
