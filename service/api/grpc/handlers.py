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

from service.api.grpc.wire import (
    FIELD_SLACK,
    UNCOUNTED_BYTES,
    Malformed,
    TooManyFields,
    count_fields,
    nested_fields,
)
from service.core.errors import PayloadTooLarge

SERVICE = service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
# (client streams, server streams) -> how grpc binds such a method
STREAMING = {
    (False, False): grpc.unary_unary_rpc_method_handler,
    (False, True): grpc.unary_stream_rpc_method_handler,
    (True, False): grpc.stream_unary_rpc_method_handler,
    (True, True): grpc.stream_stream_rpc_method_handler,
}


@dataclass(frozen=True)
class Undecodable:
    """A request whose bytes did not parse as ``message`` (the protocol's message name)."""

    message: str


@dataclass(frozen=True)
class Oversized:
    """A request of more than ``most`` protobuf fields, refused before it was parsed."""

    message: str
    most: int

    def refusal(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the message holds more than {self.most} protobuf fields, more than a "
            f"{self.message} can need"
        )


def lenient_parser(message_class: Any, counted: bool = True) -> Callable[[bytes], Any]:
    """``message_class.FromString`` that gives ``Undecodable`` instead of raising; unless not
    ``counted``, a message over ``UNCOUNTED_BYTES`` is ``Oversized`` past ``FIELD_SLACK``
    fields, counted before it is parsed (``wire``; on the loop: at most 0.4 ms)."""
    name = message_class.DESCRIPTOR.name
    nested = nested_fields(message_class.DESCRIPTOR)

    def parse(data: bytes) -> Any:
        if counted and len(data) > UNCOUNTED_BYTES:
            try:
                count_fields(data, FIELD_SLACK, nested)
            except TooManyFields:
                return Oversized(name, FIELD_SLACK)
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


def request_parser(method: Any, sized: bool = True) -> Callable[[bytes], Any]:
    """How ``method``'s requests are parsed: ``lenient_parser``, and inference requests given
    as ``SizedRequest`` (the body budget counts them) unless not ``sized``."""
    if not sized or method.input_type.name != "ModelInferRequest":
        return lenient_parser(GetMessageClass(method.input_type))
    parse = lenient_parser(GetMessageClass(method.input_type), counted=False)  # small ones only

    def sized_request(data: bytes) -> Any:
        if len(data) > UNCOUNTED_BYTES:
            return SizedRequest(None, len(data), data)
        message = parse(data)
        return message if isinstance(message, Undecodable) else SizedRequest(message, len(data))

    return sized_request


def method_handlers(servicer: Any) -> grpc.GenericRpcHandler:
    """Every method of ``GRPCInferenceService`` bound to ``servicer``'s method of the same name
    (what ``add_GRPCInferenceServiceServicer_to_server`` builds, with lenient parsing)."""
    handlers = {}
    for method in SERVICE.methods:
        serialize = GetMessageClass(method.output_type).SerializeToString
        behaviour = getattr(servicer, method.name)
        kind = STREAMING[method.client_streaming, method.server_streaming]
        handlers[method.name] = kind(
            behaviour,
            request_deserializer=request_parser(method),  # a stream's messages too
            response_serializer=serialize,
        )
    return grpc.method_handlers_generic_handler(SERVICE.full_name, handlers)
