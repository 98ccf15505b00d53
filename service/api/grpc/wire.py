"""A gRPC message's protobuf fields counted on the wire before protobuf parses it.

protobuf's parser holds the interpreter for the whole message and pays per field, whatever the
field holds: a 64 MiB message of empty ``parameters`` entries took 1.3 s to parse here, one of
empty ``raw_input_contents`` 0.7 s and 960 MB, all on the event loop, before any check could
refuse it. Counting the fields first costs Python about half a microsecond a field and stops at
the bound: what the model can take (``most_fields``), with a loop's share (``LOOP_FIELDS``) after
which the count goes on on the work pool, where the loop keeps its turns. A real client's
message has a few dozen fields; values are packed (proto3's encoding) and BYTES elements come
one field each. Every other method's messages over ``UNCOUNTED_BYTES`` are held to
``FIELD_SLACK`` as they arrive (``handlers.lenient_parser``): 60 MiB of empty ``parameters``
entries to ``RepositoryModelLoad`` took 2.1 s to parse, unknown fields to ``ServerLive`` 0.7 s,
before the admin check or anything else could look at them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from google.protobuf.descriptor import Descriptor
from tritonclient.grpc import service_pb2

from service.core.card import TensorSpec
from service.core.errors import PayloadTooLarge
from service.core.limits import MAX_ELEMENTS, MAX_NAME_CHARS

UNCOUNTED_BYTES = 16 * 1024  # parsed as they come: at worst 0.3 ms of the loop (8,192 fields)
LOOP_FIELDS = 256  # a larger message's fields counted on the loop; past them, on the work pool
LOOP_PARSE_BYTES = 1024 * 1024  # a counted message parsed on the loop up to this size (memcpy)
FIELD_SLACK = 1024  # names, shapes, parameters and outputs: more than any real client sends
# Every other method's largest message: a config override is at most 65,536 characters, and a
# name in one of 60 MiB cost the loop 0.3-0.75 s in copies and its error message
OTHER_MESSAGE_BYTES = 256 * 1024
HEAD_FIELDS = 4  # the first fields, where every serializer writes model_name, version and id
MAX_VERSION_CHARS = 16  # of a version read or echoed: a number has at most 9 digits


class Malformed(Exception):
    """Bytes that are no protobuf message (a truncated field, a group, an unknown wire type)."""


class TooManyFields(Exception):
    """More fields than the bound: the count stopped there (``counted``)."""

    def __init__(self, counted: int) -> None:
        super().__init__(counted)
        self.counted = counted


Nested = Mapping[int, "Nested"]  # field number -> the same for a message-typed field's fields


def nested_fields(message: Descriptor, depth: int = 8) -> Nested:
    """Which of ``message``'s fields are messages, by number, and theirs in turn (the protocol
    has no recursive message; ``depth`` stops one that had)."""
    if depth == 0:
        return {}
    return {
        field.number: nested_fields(field.message_type, depth - 1)
        for field in message.fields
        if field.message_type is not None
    }


INFER_REQUEST = nested_fields(service_pb2.ModelInferRequest.DESCRIPTOR)


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while pos < end and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise Malformed("a varint runs past its field")


def _walk(data: bytes, pos: int, end: int, nested: Nested, left: int) -> int:
    """Count the fields from ``pos`` to ``end`` (and inside those that are messages) against
    ``left``; what is left of it. Scalars and packed values count one field; strings and
    bytes are skipped by their length, never read."""
    while pos < end:
        left -= 1
        if left < 0:
            raise TooManyFields(0)
        key, pos = _varint(data, pos, end)
        wire = key & 7
        if wire == 2:
            length, pos = _varint(data, pos, end)
            stop = pos + length
            if stop > end:
                raise Malformed("a field runs past its message")
            inner = nested.get(key >> 3)
            if inner is not None:
                left = _walk(data, pos, stop, inner, left)
            pos = stop
        elif wire == 0:
            _, pos = _varint(data, pos, end)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:  # groups (3, 4) are proto2's, 6 and 7 are no wire type
            raise Malformed(f"wire type {wire}")
    if pos != end:
        raise Malformed("a field runs past its message")
    return left


def count_fields(data: bytes, most: int, nested: Nested = INFER_REQUEST) -> int:
    """How many protobuf fields ``data`` holds (a message whose message-typed fields are
    ``nested``), theirs included; ``TooManyFields`` past ``most`` (counting stops there),
    ``Malformed`` for bytes that are no message."""
    try:
        return most - _walk(data, 0, len(data), nested, most)
    except TooManyFields:
        raise TooManyFields(most) from None


@dataclass(frozen=True)
class Head:
    """What a message's first fields name: its model, version and id (empty where absent).
    ``name_bytes``: a model name too long to be any model's, left undecoded (its size)."""

    model_name: str = ""
    model_version: str = ""
    id: str = ""
    name_bytes: int = 0


# field number -> (its name, the most bytes decoded: a longer name is no model's, a longer
# version no number, and an id is only echoed)
HEAD_FIELDS_READ = {
    1: ("model_name", 4 * MAX_NAME_CHARS),
    2: ("model_version", MAX_VERSION_CHARS),
    3: ("id", 1024),
}


def head(data: bytes) -> Head:
    """The model, version and id among a message's first ``HEAD_FIELDS`` top-level fields, read
    in O(1) so that a message can be refused for its model before it is counted."""
    found: dict[str, Any] = {}
    pos, end = 0, len(data)
    try:
        for _ in range(HEAD_FIELDS):
            if pos >= end:
                break
            key, pos = _varint(data, pos, end)
            if key & 7 != 2:
                break
            length, pos = _varint(data, pos, end)
            field = HEAD_FIELDS_READ.get(key >> 3)
            if field is not None:
                name, most = field
                if name == "model_name" and length > most:
                    found["name_bytes"] = length
                else:  # a cut version has over 9 characters: refused as no number
                    found[name] = data[pos : pos + min(length, most + 1)].decode()
            pos += length
    except (Malformed, UnicodeDecodeError):
        pass  # the parse will say so
    return Head(**found)


def most_fields(inputs: Sequence[TensorSpec], bounds: Mapping[str, int], max_rows: int) -> int:
    """The most fields a request to a model with ``inputs`` may hold: ``FIELD_SLACK``, one a row
    (an encoded image is one BYTES element), and every value of its BYTES inputs (``bounds``:
    ``limits.value_bounds``, ``MAX_ELEMENTS`` for an input with an open axis)."""
    most = FIELD_SLACK + max_rows
    for spec in inputs:
        if spec.datatype == "BYTES":
            most += bounds.get(spec.name, MAX_ELEMENTS)
    return most


def refusal(model: str, most: int) -> PayloadTooLarge:
    """Why a message with more than ``most`` fields is refused, in the client's terms."""
    to = f"model {model!r}" if model else "a model not named in its first fields"
    return PayloadTooLarge(
        f"the message holds more than {most} protobuf fields, more than a request to {to} "
        "can need: BYTES elements count one each, and typed values must be packed (proto3's "
        "encoding, which every protobuf library uses)"
    )
