"""Property tests for the wire codec: what goes in as JSON comes out as the same array."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from service.api.predictions import top_k
from service.api.rest.codec import decode_infer_request, encode_infer_response
from service.api.rest.infer import most_values
from service.api.rest.json_wire import READ_AGAIN_HERE_BYTES, loads_infer_request, loads_object
from service.api.tensors import array_from_json
from service.core.card import TensorSpec
from service.core.errors import InvalidInput, PayloadTooLarge, ServingError, UnprocessableInput
from service.core.limits import MAX_ELEMENTS, value_bound, value_bounds
from service.dataplane.pixels import to_pixels
from service.dataplane.types import InferResponse, InputTensor
from service.engine.work_pool import TooHeavyForThisProcess

shapes = st.lists(st.integers(1, 4), min_size=1, max_size=4)


@settings(max_examples=60, deadline=None)
@given(shapes.flatmap(lambda s: arrays(np.uint8, tuple(s))), st.booleans())
def test_uint8_json_round_trips_flat_or_nested(array: np.ndarray, nested: bool) -> None:
    data = array.tolist() if nested else array.ravel().tolist()
    decoded = array_from_json(data, "UINT8", list(array.shape), "t")
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, array)


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(-3, 3).filter(lambda d: d != 0))
def test_data_length_mismatch_is_refused(shape: list[int], delta: int) -> None:
    size = max(math.prod(shape) + delta, 0)
    with pytest.raises(UnprocessableInput, match="data holds"):
        array_from_json([0] * size, "UINT8", shape, "t")


@settings(max_examples=40, deadline=None)
@given(arrays(np.uint8, (2, 4, 4, 3)))
def test_fp32_pixels_in_unit_range_round_to_the_same_uint8(pixels: np.ndarray) -> None:
    as_float = InputTensor("images", "FP32", [2, 4, 4, 3], (pixels / 255.0).astype(np.float32))
    np.testing.assert_array_equal(to_pixels(as_float, (4, 4, 3)), pixels)


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float32,
        st.tuples(st.integers(1, 5), st.integers(1, 6)),
        elements=st.floats(0, 1, width=32),
    )
)
def test_binary_and_json_responses_carry_the_same_values(array: np.ndarray) -> None:
    body, length = encode_infer_response(
        InferResponse("m", "1", "id-1", {"out": array}), {"out": True}
    )
    assert length is not None
    response = json.loads(body[:length])
    header = json.dumps({"inputs": response["outputs"]}).encode()  # the response, echoed back
    echoed = decode_infer_request(header + body[length:], len(header), 100)
    np.testing.assert_array_equal(echoed.inputs[0].data, array)


def test_top_k_orders_by_probability_and_keeps_rows() -> None:
    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]], dtype=np.float32)
    result = top_k(probs, ["a", "b", "c"], 2)
    assert [[c["name"] for c in row] for row in result] == [["b", "c"], ["a", "c"]]
    assert len(top_k(probs, ["a", "b", "c"], 10)[0]) == 3


@pytest.mark.parametrize(
    ("datatype", "values", "bounds"),
    [
        ("UINT8", [0, 256], "0..255"),
        ("INT32", [-(2**31) - 1, 0], "-2147483648..2147483647"),
        # all past int64: numpy reads them as uint64, which the cast would wrap
        ("INT64", [2**63, 2**64 - 1], "-9223372036854775808..9223372036854775807"),
    ],
)
def test_integers_outside_the_datatype_are_refused_its_bounds_taken(
    datatype: str, values: list[int], bounds: str
) -> None:
    with pytest.raises(UnprocessableInput, match=f"^x: {datatype} values must lie in {bounds}$"):
        array_from_json(values, datatype, [2], "x")
    edges = [int(bound) for bound in bounds.split("..")]
    np.testing.assert_array_equal(array_from_json(edges, datatype, [2], "x"), edges)


json_values = st.one_of(
    st.integers(-300, 300),
    st.floats(-2, 2, allow_nan=False),
    st.booleans(),
    st.text(max_size=2),
    st.lists(st.integers(0, 255), max_size=3),
)


@settings(max_examples=150, deadline=None)
@given(
    datatype=st.sampled_from(["UINT8", "FP32", "INT32", "BOOL"]),
    data=st.one_of(
        st.lists(st.integers(0, 255), min_size=1, max_size=12),
        st.lists(st.floats(0, 1, allow_nan=False), min_size=1, max_size=12),
        st.lists(json_values, max_size=12),
    ),
    nested=st.booleans(),
)
def test_simdjson_fast_decode_agrees_with_the_plain_path(
    datatype: str, data: list[object], nested: bool
) -> None:
    """``loads_infer_request`` hands flat numbers over as a buffer; whatever the data, the
    decoded tensor (or the refusal and its message) must be what the plain JSON path gives."""
    payload = [data[: len(data) // 2], data[len(data) // 2 :]] if nested and data else data
    body = orjson.dumps(
        {"inputs": [{"name": "x", "shape": [len(data)], "datatype": datatype, "data": payload}]}
    )

    def outcome(parse: Callable[[bytes], object]) -> object:
        try:
            request = parse(body)
            assert isinstance(request, dict)
            tensor = request["inputs"][0]
            return array_from_json(tensor["data"], datatype, [len(data)], "t").tolist()
        except ServingError as exc:
            return (type(exc), exc.message)

    assert outcome(loads_infer_request) == outcome(orjson.loads)


def test_json_over_the_models_values_is_refused_before_parsing_and_binary_data_not_counted() -> (
    None
):
    rows = [[0] * 3] * 4
    body = json.dumps({"inputs": [{"name": "x", "shape": [4, 3], "datatype": "FP32",
                                   "data": rows}]}).encode()  # fmt: skip
    assert decode_infer_request(body, None, 4, max_values=12).inputs[0].shape == [4, 3]
    flood = b'{"inputs": [{"name": "x", "shape": [4, 3], "datatype": "FP32", "data": ['
    flood += b"0," * 100_000 + b"0]}]}"
    with pytest.raises(PayloadTooLarge, match=r"about 1000\d\d values, more than 4 rows"):
        decode_infer_request(flood, None, 4, max_values=12)
    with pytest.raises(UnprocessableInput, match="100001 values"):  # no bound: parsed, counted
        decode_infer_request(flood, None, 4)
    header = b'{"inputs": [{"name": "x", "shape": [4, 3], "datatype": "UINT8", '
    header += b'"parameters": {"binary_data_size": 12}}]}'
    binary = b"," * 100_000  # commas in the raw bytes are data, not JSON
    request = decode_infer_request(header + binary[:12], len(header), 4, max_values=12)
    assert request.inputs[0].shape == [4, 3]


def test_a_models_values_are_bounded_only_where_its_inputs_fix_them() -> None:
    images = TensorSpec("images", "UINT8", [-1, 32, 32, 3])
    assert most_values([images], True, 1024) == 1024 * 3072
    assert most_values([images, TensorSpec("k", "INT64", [-1, 1])], True, 2) == 2 * 3073
    assert most_values([TensorSpec("m", "FP32", [4, 4])], False, 1 << 31) == 16  # no batch axis
    assert most_values([TensorSpec("t", "FP32", [-1, -1])], True, 8) is None  # an open axis
    assert most_values([TensorSpec("s", "BYTES", [-1, 1])], True, 8) is None  # "a,b" is 1 value


def test_a_binary_bytes_shape_past_the_models_input_is_refused_before_its_elements_are_split() -> (
    None
):
    """4 bytes an empty element: 60 MB split 16 million strings in Python (6-12 s)."""
    header = b'{"inputs": [{"name": "images", "shape": [8, 5000], "datatype": "BYTES", '
    header += b'"parameters": {"binary_data_size": 160000}}]}'
    body = header + b"\0" * 160_000
    bounds = value_bounds([TensorSpec("images", "UINT8", [-1, 32, 32, 3])], True, 8)
    with pytest.raises(PayloadTooLarge, match=r"holds 40000 values, more than .* \(24576\)"):
        decode_infer_request(body, len(header), 8, bounds=bounds)
    decoded = decode_infer_request(body, len(header), 8)  # unbounded: split, 40,000 of them
    assert decoded.inputs[0].data.size == 40_000
    open_axis = [TensorSpec("t", "FP32", [-1, -1])]
    assert value_bounds(open_axis, True, 8) == {"t": MAX_ELEMENTS}  # only the element limit's


def test_an_open_bytes_input_beside_a_bounded_one_keeps_the_element_limit() -> None:
    """A model with ``INT32 [-1, 16]`` and ``BYTES [-1, -1]``: the BYTES input has no bound of
    the model's, and must not borrow another input's (one row's 1,025 strings were a 413)."""
    inputs = [TensorSpec("INPUT0", "INT32", [-1, 16]), TensorSpec("INPUT1", "BYTES", [-1, -1])]
    for elements in (False, True):
        bounds = value_bounds(inputs, True, 8, bytes_elements=elements)
        assert value_bound(bounds, "INPUT1") == MAX_ELEMENTS
        assert value_bound(bounds, "unknown") == MAX_ELEMENTS  # refused by name later
    header = b'{"inputs": [{"name": "INPUT1", "shape": [1, 1025], "datatype": "BYTES", '
    header += b'"parameters": {"binary_data_size": 4100}}]}'
    bounds = value_bounds(inputs, True, 8, bytes_elements=True)
    decoded = decode_infer_request(header + b"\0" * 4100, len(header), 8, bounds=bounds)
    assert decoded.inputs[0].data.size == 1025


def test_a_tensor_the_model_does_not_have_is_bounded_by_its_largest_input() -> None:
    bounds = {"a": 10, "b": 30}
    assert (value_bound(bounds, "a"), value_bound(bounds, "zzz"), value_bound({}, "a")) == (
        10, 30, None,
    )  # fmt: skip


@pytest.mark.parametrize("loads", [loads_infer_request, loads_object])
def test_a_body_simdjson_declines_is_read_again_here_only_while_small(
    loads: Callable[[bytes], object],
) -> None:
    """An integer over 64 bits is valid JSON (orjson reads it as a float) and a stray comma is
    not; either way orjson reads the body again, into Python objects: past
    ``READ_AGAIN_HERE_BYTES`` only where that may hold the interpreter (the decoding child)."""
    small = b'{"inputs": [], "zz": 123456789012345678901234567890}'
    assert loads(small) == {"inputs": [], "zz": 1.2345678901234568e29}
    with pytest.raises(InvalidInput, match="malformed JSON"):
        loads(b'{"inputs": [1,]}')
    pad = b" " * READ_AGAIN_HERE_BYTES
    with pytest.raises(TooHeavyForThisProcess):
        loads(small[:-1] + pad + b"}")
    with pytest.raises(TooHeavyForThisProcess):
        loads(b'{"inputs": [1,]' + pad + b"}")
    assert loads(b'{"inputs": [1]' + pad + b"}") is not None  # simdjson takes it: no re-read


def test_a_top_level_field_nothing_reads_is_named_but_not_converted() -> None:
    """200,000 small objects under a key the endpoint ignores cost 2.3 s of a pool thread to
    make into Python objects; only the key is kept (the misspelling rule reads names)."""
    body = orjson.dumps({"instances": [[1, 2]], "zz": [{"a": [{"b": [1]}]}] * 1000, "topk": 3})
    parsed = loads_object(body, frozenset({"instances", "top_k"}))
    assert parsed["zz"] is None and parsed["topk"] is None
    np.testing.assert_array_equal(parsed["instances"][0], [1, 2])
    assert len(loads_object(body)["zz"]) == 1000  # without fields: every value
