"""The decode's fast lane (``plain_body.plain_request``): it takes the common v2 body, declines
every other one, and decodes what it takes exactly as the layered path does, so a request is
answered (or refused, with the same message) the same with it or without it."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
import simdjson
from hypothesis import given, settings
from hypothesis import strategies as st

from service.api.rest import codec
from service.api.rest.plain_body import plain_request
from service.core.errors import ServingError
from service.core.limits import MAX_TENSOR_NAME_CHARS
from service.dataplane.types import InferRequest

MAX_ROWS = 8


def image(datatype: str = "FP32", rows: int = 1, **changes: Any) -> dict[str, Any]:
    values: list[Any] = [0.25, 0.5, 1.0, 0.0] if datatype.startswith("FP") else [0, 7, 255, 1]
    tensor = {"name": "images", "shape": [rows, 2, 2], "datatype": datatype, "data": values * rows}
    return {**tensor, **changes}


def body(*tensors: dict[str, Any], **fields: Any) -> bytes:
    return json.dumps({"inputs": list(tensors) or [image()], **fields}).encode()


def outcome(decoded: InferRequest | ServingError) -> Any:
    """What a request decodes to, arrays by dtype, shape, values and writability; or the error's
    type and message."""
    if isinstance(decoded, ServingError):
        return type(decoded).__name__, str(decoded)
    arrays = [
        (t.data.dtype, t.data.shape, t.data.tolist(), t.data.flags.writeable)
        for t in decoded.inputs
    ]
    tensors = [(t.name, t.datatype, t.shape, t.shared_memory) for t in decoded.inputs]
    return (vars(decoded) | {"inputs": None}, tensors, arrays)


def decoded(raw: bytes, fast_lane: bool, monkeypatch: pytest.MonkeyPatch) -> Any:
    with monkeypatch.context() as patch:
        if not fast_lane:
            patch.setattr(codec, "plain_request", lambda doc, max_rows: None)
        try:
            return outcome(codec.decode_infer_request(raw, None, MAX_ROWS))
        except ServingError as error:
            return outcome(error)


COMMON = {
    "one FP32 image": body(),
    "asking for an output by name": body(outputs=[{"name": "probabilities"}]),
    "with an id": body(id="request-7", outputs=[]),
    "UINT8": body(image("UINT8")),
    "a batch of 3, nested rows": body(image(rows=3, data=[[[0.5, 0.5], [0.5, 0.5]]] * 3)),
    "FP64 and FP16": body(image("FP64"), image("FP16", name="other")),
    "integers as floats' values": body(image(data=[0, 1, 0, 1])),
    "INT64 at its bounds": body(image("INT64", data=[-(2**63), 2**63 - 1, 0, 1])),
    "FP32 at its largest value": body(image(data=[3.4028234663852886e38, 0, 0, 0])),
    "KServe's SDK: the model's name and version": body(model_name="tiny", model_version="2"),
    "an empty name and version": body(model_name="", model_version=""),
    "a null version": body(model_version=None),
    "tritonclient, no outputs: all binary": body(parameters={"binary_data_output": True}),
    "tritonclient, outputs as JSON": body(
        outputs=[{"name": "probabilities", "parameters": {"binary_data": False}}]
    ),
    "an output binary, another as the request's": body(
        outputs=[{"parameters": {"binary_data": True}, "name": "a"}, {"name": "b"}],
        parameters={"binary_data_output": False},
    ),
    "empty parameters": body(parameters={}, outputs=[{"name": "a", "parameters": {}}]),
    "outputs binary as the request asks": body(
        parameters={"binary_data_output": True},
        outputs=[{"name": "a"}, {"name": "b", "parameters": {}}],
    ),
}


@pytest.mark.parametrize("raw", COMMON.values(), ids=COMMON.keys())
def test_the_common_form_takes_the_fast_lane_and_decodes_as_the_layered_path(
    raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert plain_request(simdjson.Parser().parse(raw), MAX_ROWS) is not None
    fast = decoded(raw, True, monkeypatch)
    assert fast == decoded(raw, False, monkeypatch)
    assert isinstance(fast, tuple) and len(fast) == 3  # a request, not an error


UNUSUAL = {
    "a request timeout": body(parameters={"timeout": 100}),
    "a second request parameter": body(parameters={"binary_data_output": True, "priority": 1}),
    "binary_data_output not a boolean": body(parameters={"binary_data_output": 1}),
    "parameters null": body(parameters=None),
    "parameters a list": body(parameters=[]),
    "an output's parameters null": body(outputs=[{"name": "a", "parameters": None}]),
    "binary_data not a boolean": body(outputs=[{"name": "a", "parameters": {"binary_data": 1}}]),
    "an output in shared memory": body(
        outputs=[{"name": "a", "parameters": {"shared_memory_region": "r"}}]
    ),
    "an output's name twice": b'{"outputs": [{"name": "a", "name": "b"}], "inputs": ['
    + json.dumps(image()).encode()
    + b"]}",
    "a tensor parameter": body(image(parameters={"binary_data_size": 16})),
    "an unknown field": body(inputz=[]),
    "a misspelt tensor field": body({**image(), "shapes": [1]}),
    "a field missing": body({k: v for k, v in image().items() if k != "datatype"}),
    "a key twice": b'{"inputs": [], "inputs": [' + json.dumps(image()).encode() + b"]}",
    "a tensor key twice": body().replace(b'"name": "images"', b'"data": [1], "name": "images"', 1),
    "a numeric model_name": body(model_name=7),
    "a numeric model_version": body(model_version=2),
    "model_version 0": body(model_version="0"),
    "model_version in other digits": body(model_version="\u0662"),
    "model_version of ten digits": body(model_version="1234567890"),
    "a numeric id": body(id=7),
    "outputs null": body(outputs=None),
    "an output with parameters": body(outputs=[{"name": "p", "parameters": {"classification": 2}}]),
    "an output without a name": body(outputs=[{"nom": "p"}]),
    "no inputs": body(inputs=[]),
    "inputs not a list": b'{"inputs": {"name": "images"}}',
    "BYTES": body(image("BYTES", data=["a", "b", "c", "d"])),
    "BOOL": body(image("BOOL", data=[True, False, True, True])),
    "an unknown datatype": body(image("FP8")),
    "a zero dimension": body(image(shape=[0, 2, 2], data=[])),
    "a scalar": body(image(shape=[], data=[0.5])),
    "a boolean dimension": body(image(shape=[True, 2, 2])),
    "a fractional dimension": body(image(shape=[1.0, 2, 2])),
    "rows past the limit": body(image(rows=MAX_ROWS + 1)),
    "too few values": body(image(data=[0.5] * 3)),
    "too many values": body(image(data=[0.5] * 5)),
    "a string among numbers": body(image(data=[0.5, "0.5", 0.5, 0.5])),
    "a null among numbers": body(image(data=[0.5, None, 0.5, 0.5])),
    "a boolean among numbers": body(image(data=[0.5, True, 0.5, 0.5])),
    "an object among numbers": body(image(data=[0.5, {}, 0.5, 0.5])),
    "data not a list": body(image(data=0.5)),
    "UINT8 past 255": body(image("UINT8", data=[0, 1, 2, 256])),
    "UINT8 below 0": body(image("UINT8", data=[0, 1, 2, -1])),
    "a fraction in UINT8": body(image("UINT8", data=[0, 1, 2, 0.5])),
    "FP32 past its range": body(image(data=[1e39, 0, 0, 0])),
    "FP16 past its range": body(image("FP16", data=[70000.0, 0, 0, 0])),
    "an integer past 64 bits": body(image("UINT64", data=[2**64 - 1, 0, 0, 0])),
    "an empty name": body(image(name="")),
    "a name too long": body(image(name="x" * (MAX_TENSOR_NAME_CHARS + 1))),
    "a name not a string": body(image(name=7)),
}


@pytest.mark.parametrize("raw", UNUSUAL.values(), ids=UNUSUAL.keys())
def test_anything_else_is_declined_and_decoded_as_before(
    raw: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc = simdjson.Parser().parse(raw)
    assert plain_request(doc, MAX_ROWS) is None
    assert decoded(raw, True, monkeypatch) == decoded(raw, False, monkeypatch)


scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(-1e40, 1e40)
json_values = st.recursive(
    scalars | st.text(max_size=3),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
REQUEST_FIELDS = ["id", "inputs", "outputs", "parameters", "model_name", "model_version"]
fields = st.sampled_from([*REQUEST_FIELDS, "name", "shape", "datatype", "data"])
datatypes = st.sampled_from(
    ["FP32", "FP16", "FP64", "UINT8", "INT8", "INT64", "UINT64", "BOOL", "BYTES"]
)


flags = st.sampled_from(["binary_data", "binary_data_output", "timeout", "classification"])
parameters = st.dictionaries(flags, st.booleans() | st.integers(0, 3) | st.none(), max_size=2)
versions = st.sampled_from(["", "1", "02", "999999999", "1000000000", "0", "-1", "1.0", "\u0662"])


@st.composite
def near_common_bodies(draw: st.DrawFn) -> bytes:
    """The common body with a few of its parts replaced: a field's value, a datatype, a
    value, a shape, a field added or dropped."""
    rows = draw(st.integers(1, 3))
    tensor = image(draw(datatypes), rows)
    request: dict[str, Any] = {"inputs": [tensor]}
    if draw(st.booleans()):
        request["outputs"] = [{"name": "probabilities", "parameters": draw(parameters)}]
    if draw(st.booleans()):
        request["parameters"] = draw(parameters)
    if draw(st.booleans()):
        request["model_name"], request["model_version"] = "tiny", draw(versions)
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from([request, tensor]))
        change = draw(st.sampled_from(["value", "element", "drop", "shape"]))
        field = draw(fields)
        if change == "value":
            where[field] = draw(json_values)
        elif change == "element" and isinstance(values := tensor.get("data"), list) and values:
            values[draw(st.integers(0, len(values) - 1))] = draw(json_values)
        elif change == "drop":
            where.pop(field, None)
        else:
            tensor["shape"] = draw(st.lists(st.integers(-1, 4) | json_values, max_size=4))
    return json.dumps(request).encode()


@settings(max_examples=300, deadline=None)
@given(near_common_bodies())
def test_any_body_decodes_the_same_with_the_fast_lane_or_without(raw: bytes) -> None:
    with pytest.MonkeyPatch.context() as monkeypatch:
        assert decoded(raw, True, monkeypatch) == decoded(raw, False, monkeypatch)


def test_the_fast_lane_is_what_decodes_the_common_body(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not only equal: the layered path is not reached for it (so the bench measures the lane)."""
    monkeypatch.setattr(codec, "loads_infer_request", lambda *args: pytest.fail("layered path"))
    request = codec.decode_infer_request(body(outputs=[{"name": "probabilities"}]), None, 8)
    assert [o.name for o in request.outputs] == ["probabilities"]
    assert request.inputs[0].data.dtype == np.float32
