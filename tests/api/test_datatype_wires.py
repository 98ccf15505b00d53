"""Every datatype of the table over every wire, both ways, against tritonclient's own encoders
and decoders: REST JSON, REST's binary extension, gRPC typed contents and raw contents; and the
hostile inputs of each (lying BYTES lengths, counts past the end, wrong element types), each a
4xx naming the tensor."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from tritonclient.grpc import service_pb2
from tritonclient.utils import serialize_byte_tensor

from service.api.grpc import codec as grpc_codec
from service.api.rest import codec as rest_codec
from service.api.rest.json_wire import loads_infer_request, loads_object
from service.api.tensors import array_from_json
from service.core.datatypes import DATATYPES
from service.core.errors import ServingError, UnprocessableInput
from service.dataplane.types import InferResponse
from service.engine.dtypes import NUMPY_DTYPES
from service.engine.tensor_bytes import tensor_from_bytes, tensor_to_bytes

MAX_ROWS = 1024


def _ints(dtype: str) -> list[int]:
    info = np.iinfo(dtype)
    return [int(info.min), 0, 1, int(info.max)]


# One tensor of shape [1, 4] per datatype, its extremes included.
SAMPLES: dict[str, np.ndarray] = {
    "BOOL": np.array([[True, False, True, True]]),
    **{name: np.array([_ints(d.dtype)], d.dtype) for name, d in DATATYPES.items() if d.value_range},
    "FP16": np.array([[-65504.0, 0.0, 0.5, 65504.0]], np.float16),
    "FP32": np.array([[-3.4e38, 0.0, 1.0 / 3.0, 1e-30]], np.float32),
    "FP64": np.array([[-1e300, 0.0, 1.0 / 3.0, 5e-324]], np.float64),
    "BYTES": np.array([["", "héllo", "a\x00b", "😀" * 3]], dtype=object),
}


def test_every_datatype_of_the_table_is_sampled() -> None:
    assert sorted(SAMPLES) == sorted(DATATYPES)


def _equal(found: np.ndarray, expected: np.ndarray) -> None:
    """Same shape and values; BYTES compared as the raw bytes of each element."""
    assert list(found.shape) == list(expected.shape)
    if expected.dtype.hasobject:
        as_raw = [e.encode() if isinstance(e, str) else bytes(e) for e in found.ravel()]
        assert as_raw == [e.encode() for e in expected.ravel()]
    else:
        assert found.dtype == expected.dtype
        np.testing.assert_array_equal(found, expected)


# -- requests: what tritonclient sends, as the data plane gets it ---------------------------------


def rest_request(datatype: str, array: np.ndarray, binary: bool) -> np.ndarray:
    tensor = triton_http.InferInput("x", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, json_size = triton_http.InferenceServerClient.generate_request_body([tensor])
    request = rest_codec.decode_infer_request(body, json_size, MAX_ROWS)
    (decoded,) = request.inputs
    assert (decoded.name, decoded.datatype, decoded.shape) == ("x", datatype, list(array.shape))
    return decoded.data


def raw_contents(array: np.ndarray) -> bytes:
    if array.dtype.hasobject:
        return bytes(serialize_byte_tensor(array).item())
    return array.tobytes()


def grpc_request(datatype: str, array: np.ndarray, typed: bool) -> np.ndarray:
    message = service_pb2.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="x", datatype=datatype, shape=list(array.shape))
    if typed:
        values = array.ravel().tolist()
        if array.dtype.hasobject:
            values = [v.encode() for v in values]
        getattr(tensor.contents, str(DATATYPES[datatype].contents_field)).extend(values)
    else:
        message.raw_input_contents.append(raw_contents(array))
    (decoded,) = grpc_codec.decode_infer_request(message, MAX_ROWS).inputs
    return decoded.data


WIRES = {
    "json": lambda d, a: rest_request(d, a, binary=False),
    "binary": lambda d, a: rest_request(d, a, binary=True),
    "grpc-raw": lambda d, a: grpc_request(d, a, typed=False),
    "grpc-typed": lambda d, a: grpc_request(d, a, typed=True),
}


# FP16 has no typed gRPC field (raw only, as Triton); a typed FP16 is refused (tests below).
CASES = [(d, w) for d in SAMPLES for w in WIRES if not (w == "grpc-typed" and d == "FP16")]


@pytest.mark.parametrize(("datatype", "wire"), CASES, ids=[f"{w}-{d}" for d, w in CASES])
def test_each_datatype_arrives_from_tritonclient_as_it_was_sent(wire: str, datatype: str) -> None:
    decoded = WIRES[wire](datatype, SAMPLES[datatype])
    _equal(decoded, SAMPLES[datatype])
    if datatype == "BYTES":  # what onnxruntime's string tensors take
        assert all(type(e) is str for e in decoded.ravel())


# -- responses: what the service answers, as tritonclient reads it --------------------------------


def rest_response(array: np.ndarray, binary: bool) -> np.ndarray:
    body, length = rest_codec.encode_infer_response(
        InferResponse("m", "1", None, {"out": array}), {"out": binary}
    )
    assert (length is not None) == binary
    result = triton_http.InferResult.from_response_body(body, header_length=length)
    assert result.get_output("out")["datatype"] == DATATYPE_OF[array.dtype.str]
    found = result.as_numpy("out")
    assert found is not None
    return found


def grpc_response(array: np.ndarray) -> np.ndarray:
    message = grpc_codec.encode_infer_response(InferResponse("m", "1", "", {"out": array}))
    result = triton_grpc.InferResult(message)
    assert result.get_output("out").datatype == DATATYPE_OF[array.dtype.str]
    found = result.as_numpy("out")
    assert found is not None
    return found


DATATYPE_OF = {array.dtype.str: name for name, array in SAMPLES.items()}
ANSWERS = {
    "json": lambda a: rest_response(a, binary=False),
    "binary": lambda a: rest_response(a, binary=True),
    "grpc": grpc_response,
}


@pytest.mark.parametrize("wire", ANSWERS)
@pytest.mark.parametrize("datatype", SAMPLES)
def test_each_datatype_answers_tritonclient_as_the_model_gave_it(wire: str, datatype: str) -> None:
    _equal(ANSWERS[wire](SAMPLES[datatype]), SAMPLES[datatype])


@pytest.mark.parametrize("wire", ANSWERS)
def test_bytes_answers_carry_str_and_bytes_elements_alike(wire: str) -> None:
    """onnxruntime answers ``str``, the classification extension ``bytes``: the same on the wire."""
    mixed = np.array(["héllo", b"w\xc3\xb6rld"], dtype=object)
    _equal(ANSWERS[wire](mixed), np.array(["héllo", "wörld"], dtype=object))


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([name for name in SAMPLES if name != "BYTES"]).flatmap(
        lambda name: st.tuples(
            st.just(name),
            arrays(
                SAMPLES[name].dtype,
                st.tuples(st.integers(1, 3), st.integers(0, 5)),
                elements={"allow_nan": False} if SAMPLES[name].dtype.kind == "f" else None,
            ),
        )
    ),
    st.sampled_from(list(WIRES)),
)
def test_numbers_round_trip_every_wire(case: tuple[str, np.ndarray], wire: str) -> None:
    """Infinities too, except in JSON, which has no word for them (Triton's neither)."""
    datatype, array = case
    if wire == "grpc-typed" and datatype == "FP16":
        wire = "grpc-raw"
    finite = array.dtype.kind != "f" or bool(np.isfinite(array).all())
    if finite or wire != "json":
        _equal(WIRES[wire](datatype, array), array)
    for name, answer in ANSWERS.items():
        if finite or name != "json":
            _equal(answer(array), array)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.text(max_size=8), min_size=1, max_size=6), st.sampled_from(list(WIRES)))
def test_strings_round_trip_every_wire(strings: list[str], wire: str) -> None:
    array = np.array([*strings, ""], dtype=object).reshape(1, -1)
    _equal(WIRES[wire]("BYTES", array), array)
    for answer in ANSWERS.values():
        _equal(answer(array), array)


# -- hostile input ------------------------------------------------------------------------------


def json_body(datatype: str, shape: list[int], data: Any) -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "x", "datatype": datatype, "shape": shape, "data": data}]}
    )


def binary_body(
    datatype: str, shape: list[int], raw: bytes, size: int | None = None
) -> tuple[bytes, int]:
    parameters = {"binary_data_size": len(raw) if size is None else size}
    tensor = {"name": "x", "datatype": datatype, "shape": shape, "parameters": parameters}
    header = orjson.dumps({"inputs": [tensor]})
    return header + raw, len(header)


def lengths(*elements: bytes) -> bytes:
    return b"".join(len(e).to_bytes(4, "little") + e for e in elements)


def refusal(decode: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(ServingError) as refused:
        decode(*args, MAX_ROWS)
    return refused.value.status, refused.value.message


HOSTILE_JSON = {
    "a string in INT8": ("INT8", [2], [1, "a"], "INT8 data must be integers, found strings"),
    "300 in INT8": ("INT8", [2], [1, 300], "INT8 values must lie in -128..127"),
    "a float in UINT16": ("UINT16", [2], [1, 1.5], "UINT16 data must be integers, found fractions"),
    "a negative UINT64": ("UINT64", [2], [-1, 2**64 - 1], "UINT64 values must lie in 0..1844"),
    "past UINT32": ("UINT32", [1], [2**32], "UINT32 values must lie in 0..4294967295"),
    "a boolean in INT16": ("INT16", [2], [True, 1], "INT16 data must be integers, found booleans"),
    "an integer in BOOL": (
        "BOOL",
        [2],
        [True, 1],
        "BOOL data must be true or false, found integers",
    ),
    "past FP16": ("FP16", [2], [1.0, 70000], "FP16 values must lie in -65504..65504"),
    "past FP32": ("FP32", [1], [1e39], "FP32 values must lie in -3.40282e+38..3.40282e+38"),
    "a string in FP64": ("FP64", [2], ["1.0", 1.0], "FP64 data must be numbers, found strings"),
    "a number in BYTES": ("BYTES", [2], ["a", 3], "BYTES data must be strings, found integers"),
    "a null in BYTES": ("BYTES", [2], ["a", None], "BYTES data must be strings, found nulls"),
    "an object in BYTES": (
        "BYTES",
        [1],
        [{"b64": "AA=="}],
        "BYTES data must be strings, found objects",
    ),
    "nested BYTES, one short": ("BYTES", [2, 2], [["a", "b"], ["c"]], "data holds 3 values"),
    "BYTES count past the data": ("BYTES", [3], ["a", "b"], "data holds 2 values but shape [3]"),
}


@pytest.mark.parametrize("case", HOSTILE_JSON.values(), ids=HOSTILE_JSON)
def test_wrong_json_elements_are_a_422_naming_the_tensor(case: tuple[Any, ...]) -> None:
    datatype, shape, data, message = case
    status, text = refusal(rest_codec.decode_infer_request, json_body(datatype, shape, data), None)
    assert status == 422 and text.startswith("input 'x': ") and message in text, text


def test_a_wide_string_among_many_in_a_numeric_tensor_is_refused_before_numpy_sees_it() -> None:
    """``np.array`` would make one fixed-width string array: a million elements as wide as the
    widest (4 TB here); the element types are looked at first."""
    data = ["x" * 1_000_000] + ["a"] * 1_000_000
    status, text = refusal(
        rest_codec.decode_infer_request, json_body("INT8", [1, len(data)], data), None
    )
    assert status == 422 and "found strings" in text


HOSTILE_BINARY = {
    "a lying BYTES length": (
        "BYTES", [2], (100).to_bytes(4, "little") + b"abc" + lengths(b"x"), None,
        "BYTES element 0 claims 100 bytes but the binary data has 8 left",
    ),
    "a length prefix past the end": (
        "BYTES", [2], lengths(b"ab") + b"\x01\x00\x00\x00", None,
        "BYTES element 1 claims 1 bytes but the binary data has 0 left",
    ),
    "a prefix cut short": (
        "BYTES", [3], lengths(b"abcdef", b"") + b"\x01\x00", None,
        "the binary data ends at element 2 of 3 BYTES elements",
    ),
    "a count past the end": (
        "BYTES", [1, 2**31 - 1], lengths(b"a"), None,
        "5 bytes of binary data cannot hold 2147483647 BYTES elements",
    ),
    "bytes after the last element": (
        "BYTES", [1], lengths(b"a") + b"zz", None, "2 bytes of binary data after the last of 1",
    ),
    "not UTF-8": ("BYTES", [2], lengths(b"ok", b"\xff\xfe"), None, "BYTES element 1 is not UTF-8"),
    "a size that does not divide": (
        "INT32", [16], bytes(63), None, "63 bytes of binary data but shape [16] of INT32 needs 64",
    ),
    "FP64 one value short": ("FP64", [2], bytes(8), None, "8 bytes of binary data but shape [2]"),
    "a size past the body": ("UINT16", [2], bytes(4), 10, "binary_data_size is 10 but the body"),
}  # fmt: skip


@pytest.mark.parametrize("case", HOSTILE_BINARY.values(), ids=HOSTILE_BINARY)
def test_hostile_binary_tensors_are_a_422_naming_the_tensor(case: tuple[Any, ...]) -> None:
    datatype, shape, raw, size, message = case
    body, length = binary_body(datatype, shape, raw, size)
    status, text = refusal(rest_codec.decode_infer_request, body, length)
    assert status == 422 and text.startswith("input 'x': ") and message in text, text
    if size is None:  # gRPC's raw contents: the same checks (no declared size to lie)
        status, text = refusal(grpc_codec.decode_infer_request, grpc_raw(datatype, shape, raw))
        assert status == 422 and message.replace("binary", "raw") in text, text


def grpc_raw(datatype: str, shape: list[int], raw: bytes) -> Any:
    message = service_pb2.ModelInferRequest(model_name="m", raw_input_contents=[raw])
    message.inputs.add(name="x", datatype=datatype, shape=shape)
    return message


def grpc_typed(datatype: str, shape: list[int], **contents: list[Any]) -> Any:
    message = service_pb2.ModelInferRequest(model_name="m")
    tensor = message.inputs.add(name="x", datatype=datatype, shape=shape)
    for field, values in contents.items():
        getattr(tensor.contents, field).extend(values)
    return message


HOSTILE_GRPC = {
    "bytes_contents on INT32": (
        grpc_typed("INT32", [1], bytes_contents=[b"1"]),
        422, "INT32 values go in contents.int_contents, not bytes_contents",
    ),
    "a second field beside the right one": (
        grpc_typed("INT8", [1], int_contents=[1], fp32_contents=[1.0]),
        422, "INT8 values go in contents.int_contents, not fp32_contents",
    ),
    "300 in INT8": (grpc_typed("INT8", [1], int_contents=[300]), 422, "INT8 values must lie in"),
    "past UINT16": (grpc_typed("UINT16", [1], uint_contents=[70000]), 422, "0..65535"),
    "FP16 typed": (grpc_typed("FP16", [1], fp32_contents=[1.0]), 422, "raw_input_contents"),
    "BYTES count short": (grpc_typed("BYTES", [2], bytes_contents=[b"a"]), 422, "data holds 1"),
    "BYTES not UTF-8": (grpc_typed("BYTES", [1], bytes_contents=[b"\xff"]), 422, "not UTF-8"),
    "contents beside raw": (
        _both := grpc_raw("INT32", [1], bytes(4)), 400, "contents given as well as raw",
    ),
}  # fmt: skip
_both.inputs[0].contents.int_contents.append(1)


@pytest.mark.parametrize("case", HOSTILE_GRPC.values(), ids=HOSTILE_GRPC)
def test_hostile_typed_contents_are_refused_naming_the_tensor(case: tuple[Any, ...]) -> None:
    message, expected_status, expected = case
    status, text = refusal(grpc_codec.decode_infer_request, message)
    assert status == expected_status and text.startswith("input 'x': ") and expected in text, text


def test_typed_numbers_are_read_a_slice_at_a_time_exactly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Typed contents become numpy ``TYPED_SLICE`` values a call (one call over millions held
    the interpreter 160-240 ms); across the slices' edges every value arrives, and the bounds
    are those of the datatype, not of the field's type."""
    monkeypatch.setattr(grpc_codec, "TYPED_SLICE", 4)
    for datatype, field, values in (
        ("UINT8", "uint_contents", [0, 1, 2, 3, 4, 5, 6, 7, 8, 255]),
        ("INT64", "int64_contents", [-(2**63), 2**63 - 1, 0, 5, -5]),
        ("UINT64", "uint64_contents", [2**64 - 1, 0, 1, 2, 3]),
        ("FP32", "fp32_contents", [0.5, -1.25, float("inf"), 3.0, 7.5]),
        ("BOOL", "bool_contents", [True, False, True, True, False]),
    ):
        message = grpc_typed(datatype, [len(values)], **{field: values})
        (tensor,) = grpc_codec.decode_infer_request(message, MAX_ROWS).inputs
        assert tensor.data.dtype == NUMPY_DTYPES[datatype]
        assert tensor.data.tolist() == values, datatype
    past = grpc_typed("UINT8", [9], uint_contents=[0] * 8 + [256])  # in the last slice
    status, text = refusal(grpc_codec.decode_infer_request, past)
    assert status == 422 and "0..255" in text


def test_bytes_raw_contents_count_as_python_work_and_numbers_do_not() -> None:
    """gRPC decodes inline on the event loop only below ``INLINE_DECODE_BYTES`` of Python work:
    raw numbers are read in place, raw BYTES are split element by element."""
    raw = lengths(*[b"abc"] * 1000)
    assert grpc_codec.python_decode_bytes(grpc_raw("BYTES", [1, 1000], raw)) == len(raw)
    assert grpc_codec.python_decode_bytes(grpc_raw("INT32", [1, 1000], bytes(4000))) == 0
    typed = grpc_typed("BYTES", [2], bytes_contents=[b"abcd", b"ef"])
    assert grpc_codec.python_decode_bytes(typed) == 2 * 4 + 6
    assert grpc_codec.python_decode_bytes(grpc_typed("INT8", [3], int_contents=[1, 2, 3])) == 12


json_values = st.one_of(
    st.integers(-(2**63), 2**64 - 1),
    st.integers(-300, 300),
    st.floats(-1e6, 1e6, allow_nan=False),
    st.booleans(),
    st.text(max_size=3),
    st.none(),
)


@settings(max_examples=200, deadline=None)
@given(
    datatype=st.sampled_from(list(DATATYPES)),
    data=st.lists(json_values, max_size=8) | st.lists(st.integers(0, 2**64 - 1), max_size=8),
    nested=st.booleans(),
)
def test_every_datatype_decodes_alike_through_simdjson_and_orjson(
    datatype: str, data: list[Any], nested: bool
) -> None:
    """The fast JSON path (simdjson's number buffers) and the plain one (orjson) give every
    datatype the same tensor, or the same refusal."""
    payload = [data[: len(data) // 2], data[len(data) // 2 :]] if nested and data else data
    body = json_body(datatype, [len(data)], payload)

    def outcome(parse: Any) -> object:
        try:
            tensor = parse(body)["inputs"][0]
            found = array_from_json(tensor["data"], datatype, [len(data)], "t")
            return (found.dtype.str, found.tolist())
        except ServingError as exc:
            return (type(exc), exc.message)

    assert outcome(loads_infer_request) == outcome(orjson.loads)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=48), st.integers(0, 16), st.sampled_from(list(DATATYPES)))
def test_any_raw_bytes_decode_exactly_or_are_a_422(raw: bytes, count: int, datatype: str) -> None:
    """Whatever the bytes, a tensor or a refusal naming it; never another exception."""
    try:
        array = tensor_from_bytes(raw, datatype, [count], "input 'x'")
    except UnprocessableInput as refused:
        assert refused.message.startswith("input 'x': ")
    else:
        assert array.shape == (count,)
        assert tensor_to_bytes(array) == raw  # what was read is exactly what was sent


def test_v1_rows_of_strings_are_never_made_one_wide_numpy_array() -> None:
    """v1 bodies go through ``loads_object``, which makes numpy rows of nested arrays: rows
    holding strings stay lists (50,000 strings as wide as a 10,000-character one would be 2 GB)
    and are refused, or kept as text for BYTES."""
    row = ["x" * 10_000] + ["a"] * 50_000
    body = orjson.dumps({"instances": [[row], [[1, 2], [3, 4]]]})
    first, second = loads_object(body)["instances"]
    assert isinstance(first[0], list) and isinstance(second[0], np.ndarray)
    shape = [1, len(row)]
    for instance, dims in ((first, shape), (row, shape[1:])):  # a row made by loads_object, or
        with pytest.raises(UnprocessableInput, match=r"^input 'x': INT8 data must be integers"):
            array_from_json(instance, "INT8", dims, "input 'x'", nested=True)  # the row itself
    strings = array_from_json(first, "BYTES", shape, "input 'x'", nested=True)
    assert strings.dtype == object and strings[0, 0] == row[0]
