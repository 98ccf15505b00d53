"""The gRPC service's method table, built from the protocol's descriptor with request parsing that
cannot fail: bytes that are no valid message reach the handler as ``Undecodable``, which answers
INVALID_ARGUMENT in our words (grpc's own path answers UNKNOWN with protobuf's exception text),
and a large message of too many fields as ``Oversized`` (RESOURCE_EXHAUSTED), never parsed.
Inference requests come as ``SizedRequest``, with their message's length for the body budget;
large ones unparsed, for their fields to be counted first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from tritonclient.grpc import service_pb2

from service.api.grpc.admission import unary
from service.api.grpc.wire import (
    FIELD_SLACK,
    OTHER_MESSAGE_BYTES,
    UNCOUNTED_BYTES,
    Malformed,
    TooManyFields,
    count_fields,
    nested_fields,
)
from service.core.errors import PayloadTooLarge

SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# server streams -> how grpc binds such a method; the client always streams (unary ones too)
STREAMING = {
    False: grpc.stream_unary_rpc_method_handler,
    True: grpc.stream_stream_rpc_method_handler,
}


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes did not parse as ``message`` (the protocol's message name)."""

    message: str


@dataclass(frozen=True)
class Oversized:
    """A request refused before it was parsed: it holds ``what``, more than a ``message`` can
    need."""

    message: str
    what: str

    def refusal(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the message holds {self.what}, more than a {self.message} can need"
        )


def lenient_parser(
    message_class: Any, counted: bool = True, most_bytes: int | None = None
) -> Callable[[bytes], Any]:
    """``message_class.FromString`` that gives ``Undecodable`` instead of raising; unless not
    ``counted``, a message over ``UNCOUNTED_BYTES`` is ``Oversized`` past ``FIELD_SLACK``
    fields, counted before it is parsed (``wire``; on the loop: at most 0.4 ms), and one over
    ``most_bytes`` is ``Oversized`` unread."""
    name = message_class.DESCRIPTOR.name
    nested = nested_fields(message_class.DESCRIPTOR) if counted else {}

    def parse(data: bytes) -> Any:
        if most_bytes is not None and len(data) > most_bytes:
            return Oversized(name, f"{len(data)} bytes (at most {most_bytes})")
        if counted and len(data) > UNCOUNTED_BYTES:
            try:
                count_fields(data, FIELD_SLACK, nested)
            except TooManyFields:
                return Oversized(name, f"more than {FIELD_SLACK} protobuf fields")
            except Malformed:
                return Undecodable(name)
        try:
            return message_class.FromString(data)
        except (DecodeError, ValueError, RuntimeError):
            return Undecodable(name)

    return parse


@dataclass(slots=True)
class SizedRequest:
    """An inference request and the size of its message, which the body budget counts while it
    is answered (``Message.ByteSize`` would serialise it again: 60 ms for 60 MB). A message over
    ``wire.UNCOUNTED_BYTES`` comes unparsed (``message`` None, its ``data``): its handler counts
    its fields first (``service.api.grpc.wire``), then keeps the message in place of the bytes
    (protobuf copies them: both held would be twice what the body budget counts)."""

    message: Any
    size: int
    data: bytes = b""


def release(request: Any) -> None:
    """Let go of an answered request's message: grpc's request iterator keeps the last message it
    gave in a reference cycle with the call's state until the cycle collector runs, which counts
    objects, not bytes (ten failed 60 MiB calls held 676 MB, a compressed one 60 MB for 60 kB
    sent); what it keeps is then an empty ``SizedRequest``."""
    if isinstance(request, SizedRequest):
        request.message, request.data = None, b""


def request_parser(method: Any, sized: bool = True) -> Callable[[bytes], Any]:
    """How ``method``'s requests are parsed: ``lenient_parser`` (every other method's messages
    held to ``OTHER_MESSAGE_BYTES``), and inference requests given as ``SizedRequest`` (the body
    budget counts them) unless not ``sized``."""
    if method.input_type.name != "ModelInferRequest":
        return lenient_parser(GetMessageClass(method.input_type), most_bytes=OTHER_MESSAGE_BYTES)
    if not sized:
        return lenient_parser(GetMessageClass(method.input_type))
    parse = lenient_parser(GetMessageClass(method.input_type), counted=False)  # small ones only

    def sized_request(data: bytes) -> Any:
        if len(data) > UNCOUNTED_BYTES:
            return SizedRequest(None, len(data), data)
        message = parse(data)
        return message if isinstance(message, Undecodable) else SizedRequest(message, len(data))

    return sized_request


def _serializer(to_bytes: Callable[[Any], bytes]) -> Callable[[Any], bytes]:
    """``to_bytes``, passing on an answer already serialized (a large one, on the work pool)."""

    def serialize(response: Any) -> bytes:
        return response if type(response) is bytes else to_bytes(response)

    return serialize


def method_handlers(servicer: Any) -> grpc.GenericRpcHandler:
    """Every method of ``GRPCInferenceService`` bound to ``servicer``'s method of the same name
    (what ``add_GRPCInferenceServiceServicer_to_server`` builds, with lenient parsing). A unary
    method is bound as client-streaming, so that the wait for its one message is the servicer's
    ``admission`` to bound (``admission.unary``); the protocol has no server-streaming one."""
    handlers = {}
    for method in SERVICE.methods:
        serialize = _serializer(GetMessageClass(method.output_type).SerializeToString)
        behaviour = getattr(servicer, method.name)
        if not method.client_streaming:
            assert not method.server_streaming, method.name
            refuse = servicer.refuse(method.name)
            behaviour = unary(servicer.admission, behaviour, refuse, release)
        kind = STREAMING[method.server_streaming]
        handlers[method.name] = kind(
            behaviour,
            request_deserializer=request_parser(method),  # a stream's messages too
            response_serializer=serialize,
        )
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)
