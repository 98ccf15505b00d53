"""Counting a ModelInferRequest's protobuf fields on the wire, before protobuf parses it."""

from __future__ import annotations

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from service.api.grpc import wire
from service.core.card import TensorSpec
from service.core.errors import MAX_SHOWN_CHARS, shown
from service.core.limits import MAX_ELEMENTS

HEAD = service_pb2.ModelInferRequest(model_name="tiny").SerializeToString()


def tritonclient_like() -> service_pb2.ModelInferRequest:
    """A request as tritonclient builds one: an id, parameters, raw and typed inputs, outputs."""
    message = service_pb2.ModelInferRequest(model_name="cifar10_cnn", model_version="2", id="a")
    message.parameters["timeout"].int64_param = 5  # entry, key, value, its int64: 4 fields
    images = message.inputs.add(name="images", datatype="FP32", shape=[64, 32, 32, 3])
    message.raw_input_contents.append(np.zeros((64, 32, 32, 3), np.float32).tobytes())
    words = message.inputs.add(name="words", datatype="BYTES", shape=[3])
    words.contents.bytes_contents.extend([b"a", b"", b"c"])
    message.outputs.add(name="logits").parameters["classification"].int64_param = 3
    assert images.name  # the inputs are the message's own (``add``)
    return message


def test_a_real_requests_fields_are_counted_every_one_and_its_head_read() -> None:
    data = tritonclient_like().SerializeToString()
    # name, version, id, 4 for the parameter; images: the tensor, name, datatype, packed shape;
    # words: the same 4, contents and 3 elements; the output: itself, name, 4 for its parameter;
    # one raw_input_contents of 786,432 bytes, skipped by its length
    assert wire.count_fields(data, 100) == 3 + 4 + 4 + 8 + 6 + 1
    assert wire.head(data) == wire.Head("cifar10_cnn", "2", "a")


def test_counting_stops_at_the_bound_before_reading_what_follows() -> None:
    data = HEAD + b"\x3a\x00" * 1000 + b"\xff"  # 1,000 empty raw contents, then no message
    with pytest.raises(wire.TooManyFields) as refused:
        wire.count_fields(data, 100)
    assert refused.value.counted == 100  # the broken end was never reached
    with pytest.raises(wire.Malformed):
        wire.count_fields(data, 2000)


@pytest.mark.parametrize(
    "tail",
    [
        b"\x3a\x05ab",  # a length past the message's end
        b"\x3a",  # a key with no length
        b"\x0b\x0c",  # a group (wire type 3)
        b"\x0f",  # wire type 7
        b"\x18" + b"\xff" * 11,  # a varint of more than 64 bits
        b"\x2a\x02\x3a\x05",  # an input whose own field runs past it
    ],
)
def test_bytes_that_are_no_message_are_found_malformed(tail: bytes) -> None:
    with pytest.raises(wire.Malformed):
        wire.count_fields(HEAD + tail, 100)


def test_values_count_one_field_each_unless_packed() -> None:
    unpacked = b"\x20\x00" * 50  # uint_contents, 50 values one field each (proto2's way)
    contents = b"\x2a" + bytes([len(unpacked)]) + unpacked  # the input's contents
    tensor = b"\x0a\x01x" + contents
    data = HEAD + b"\x2a" + bytes([len(tensor)]) + tensor
    assert wire.count_fields(data, 1000) == 1 + 1 + 1 + 1 + 50
    message = service_pb2.ModelInferRequest.FromString(data)  # protobuf reads the same values
    assert len(message.inputs[0].contents.uint_contents) == 50
    packed = service_pb2.ModelInferRequest(model_name="tiny")
    packed.inputs.add(name="x").contents.uint_contents.extend(range(50))
    assert wire.count_fields(packed.SerializeToString(), 1000) == 1 + 1 + 1 + 1 + 1


def test_the_head_is_what_its_first_fields_name_and_nothing_past_them() -> None:
    late = service_pb2.ModelInferRequest(id="x").SerializeToString() + b"\x3a\x00" * 4 + HEAD
    assert wire.head(late) == wire.Head(id="x")  # the model named fifth: not looked for
    assert wire.head(b"\x0a\x02\xff\xfe") == wire.Head()  # no UTF-8: the parse will say so
    assert wire.head(b"\x0a\x09ab") == wire.Head(model_name="ab")  # cut short: what is there


def test_the_most_fields_are_the_slack_a_field_a_row_and_every_bytes_value() -> None:
    images = TensorSpec("images", "FP32", [-1, 32, 32, 3])
    words = TensorSpec("words", "BYTES", [-1, 4])
    open_words = TensorSpec("open", "BYTES", [-1, -1])
    assert wire.most_fields([images], {"images": 8 * 3072}, 8) == wire.FIELD_SLACK + 8
    bounds = {"images": 8 * 3072, "words": 32}
    assert wire.most_fields([images, words], bounds, 8) == wire.FIELD_SLACK + 8 + 32
    assert wire.most_fields([open_words], {}, 8) == wire.FIELD_SLACK + 8 + MAX_ELEMENTS


def test_the_refusal_names_the_model_or_says_none_was_named() -> None:
    assert "to model 'tiny' can need" in wire.refusal("tiny", 1032).message
    assert "a model not named in its first fields" in wire.refusal("", 1032).message


def test_a_clients_string_is_shown_whole_when_short_and_cut_when_long() -> None:
    assert shown("cifar10_cnn") == "'cifar10_cnn'"
    long = "a" * 10_000
    assert shown(long) == f"{'a' * MAX_SHOWN_CHARS!r}... (10000 characters)"


def test_a_name_too_long_for_any_model_is_measured_not_decoded() -> None:
    long = service_pb2.ModelInferRequest(model_name="a" * 600, model_version="1" * 50, id="i")
    start = wire.head(long.SerializeToString())
    assert (start.model_name, start.name_bytes, start.id) == ("", 600, "i")
    assert start.model_version == "1" * 17  # cut past 16: still no version number (9 digits)
    fits = service_pb2.ModelInferRequest(model_name="é" * 128).SerializeToString()  # 256 bytes
    assert wire.head(fits) == wire.Head(model_name="é" * 128)
