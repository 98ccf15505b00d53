"""Wire tensors <-> numpy: Open Inference Protocol v2 JSON (and its binary extension), v1 instances.

Shape, datatype and length are checked here, once, before a request reaches a model; a bad
request is refused with a message naming the tensor or instance.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.api.json_wire import dumps, json_object, loads_infer_request
from service.core.datatypes import DATATYPES
from service.core.errors import InvalidInput, UnprocessableInput
from service.core.limits import check_tensor_count, checked_shape
from service.dataplane.types import InferRequest, InferResponse, InputTensor, RequestedOutput
from service.engine.runtime import NUMPY_DTYPES

DATATYPE_NAMES = {dtype: name for name, dtype in NUMPY_DTYPES.items()}  # numpy -> the protocol
# The fields of a v2 infer request (the protocol's, and the model_name / model_version that the
# KServe SDK's REST client writes into the body), its input tensors and its requested outputs.
REQUEST_FIELDS = frozenset({"id", "parameters", "inputs", "outputs", "model_name", "model_version"})
TENSOR_FIELDS = frozenset({"name", "shape", "datatype", "parameters", "data"})
OUTPUT_FIELDS = frozenset({"name", "parameters"})


def _parameters(value: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    return json_object(value.get("parameters", {}), f"{where}.parameters")


def _shape(value: Any, where: str, max_rows: int) -> list[int]:
    if not isinstance(value, list):
        raise InvalidInput(f"{where}.shape must be a list of integers")
    return checked_shape(value, where, max_rows)


def _flatten(data: list[Any]) -> list[Any]:
    """Nested lists as one flat list, depth-first (iterative: JSON nesting can be deep)."""
    flat: list[Any] = []
    stack = [iter(data)]
    while stack:
        for item in stack[-1]:
            if isinstance(item, list):
                stack.append(iter(item))
                break
            flat.append(item)
        else:
            stack.pop()
    return flat


def array_from_json(
    data: Any, datatype: str, shape: list[int], where: str, *, nested: bool = False
) -> np.ndarray:
    """JSON data (flat or nested, row-major) as an array of ``shape`` in ``datatype``.

    ``nested`` requires the nesting itself to have ``shape`` (v1 instances), not just its length.
    """
    if isinstance(data, np.ndarray):  # already numbers (``loads_infer_request``)
        array = data
    elif not isinstance(data, list):
        raise InvalidInput(f"{where}.data must be a JSON array")
    else:
        try:
            array = np.array(data)
        except (ValueError, TypeError):
            if nested:
                raise UnprocessableInput(
                    f"{where}.data is ragged or mixes types; expected {datatype} numbers"
                ) from None
            # v2 data may be nested any way: its values in row-major order are what count
            array = np.array(_flatten(data))
    expected = math.prod(shape)
    if nested and list(array.shape) != shape:
        raise UnprocessableInput(
            f"{where}: pixel array of shape {list(array.shape)}, expected {shape}"
        )
    if array.size != expected:
        raise UnprocessableInput(
            f"{where}: data holds {array.size} values but shape {shape} needs {expected}"
        )
    if array.size == 0:
        return np.zeros(shape, dtype=NUMPY_DTYPES[datatype])
    kind = array.dtype.kind
    if datatype == "BOOL":
        if kind != "b":
            raise UnprocessableInput(f"{where}: BOOL data must be true or false")
    elif kind not in "iuf" or (datatype not in ("FP32", "FP16") and kind == "f"):
        found = {"b": "booleans", "U": "strings", "O": "mixed values", "f": "fractions"}.get(
            kind, array.dtype.name
        )
        wanted = "numbers" if datatype in ("FP32", "FP16") else "integers"
        raise UnprocessableInput(f"{where}: {datatype} data must be {wanted}, found {found}")
    value_range = DATATYPES[datatype].value_range
    if value_range is not None and kind in "iu":
        low, high = value_range
        if array.min() < low or array.max() > high:
            raise UnprocessableInput(f"{where}: {datatype} values must lie in {low}..{high}")
    return array.astype(NUMPY_DTYPES[datatype], copy=False).reshape(shape)


def decode_infer_request(body: bytes, header_length: int | None, max_rows: int) -> InferRequest:
    """A v2 infer body: JSON, or a JSON header and raw tensor bytes (the binary extension)."""
    binary = b""
    if header_length is not None:
        if not 0 < header_length <= len(body):
            raise InvalidInput(
                f"Inference-Header-Content-Length {header_length} does not fit the "
                f"{len(body)}-byte body"
            )
        body, binary = body[:header_length], body[header_length:]
    request = json_object(
        loads_infer_request(body), "the request", REQUEST_FIELDS, ignore_unknown=True
    )
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InvalidInput("'id' must be a string")
    model_name = request.get("model_name")
    if model_name is not None and not isinstance(model_name, str):
        raise InvalidInput("'model_name' must be a string")
    binary_output = _parameters(request, "the request").get("binary_data_output") is True
    return InferRequest(
        request_id,
        _input_tensors(request.get("inputs"), binary, max_rows),
        _requested_outputs(request.get("outputs", []), binary_output),
        binary_output,
        model_name or None,
        _model_version(request.get("model_version")),
    )


def _input_tensors(raw_inputs: Any, binary: bytes, max_rows: int) -> list[InputTensor]:
    """The request's input tensors; binary ones take their bytes from ``binary`` in order."""
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise InvalidInput("'inputs' must be a non-empty list of tensors")
    check_tensor_count(len(raw_inputs), "inputs")
    inputs: list[InputTensor] = []
    offset = 0
    for i, raw in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        tensor = json_object(raw, where, TENSOR_FIELDS)
        name, datatype = tensor.get("name"), tensor.get("datatype")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"{where}.name must be a non-empty string")
        where = f"input {name!r}"
        if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
            raise UnprocessableInput(
                f"{where}: datatype {datatype!r} is not one of {', '.join(NUMPY_DTYPES)}"
            )
        shape = _shape(tensor.get("shape"), where, max_rows)
        size = _parameters(tensor, where).get("binary_data_size")
        if size is not None:
            data = _binary_data(binary[offset:], size, datatype, shape, where)
            offset += data.nbytes
        else:
            data = array_from_json(tensor.get("data"), datatype, shape, where)
        inputs.append(InputTensor(name, datatype, shape, data))
    if offset != len(binary):
        raise UnprocessableInput(
            f"the body carries {len(binary) - offset} bytes of binary data no input claims"
        )
    return inputs


def _binary_data(rest: bytes, size: Any, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """The tensor held in the first ``size`` bytes of ``rest`` (the binary extension)."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInput(f"{where}: binary_data_size must be a non-negative integer")
    chunk = rest[:size]
    dtype = NUMPY_DTYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(chunk) != size or size != expected:
        raise UnprocessableInput(
            f"{where}: {len(chunk)} bytes of binary data but shape {shape} of "
            f"{datatype} needs {expected}"
        )
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _requested_outputs(raw_outputs: Any, binary_output: bool) -> list[RequestedOutput]:
    if not isinstance(raw_outputs, list):
        raise InvalidInput("'outputs' must be a list")
    check_tensor_count(len(raw_outputs), "outputs")
    outputs: list[RequestedOutput] = []
    for i, raw in enumerate(raw_outputs):
        out = json_object(raw, f"outputs[{i}]", OUTPUT_FIELDS)
        name = out.get("name")
        if not isinstance(name, str) or not name:
            raise InvalidInput(f"outputs[{i}].name must be a non-empty string")
        flag = _parameters(out, f"outputs[{i}]").get("binary_data", binary_output)
        outputs.append(RequestedOutput(name, flag is True))
    return outputs


def _model_version(value: Any) -> str | None:
    """A body's ``model_version`` (a string, as the protocol has it; empty means none)."""
    if value is None or value == "":
        return None
    number = isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 9
    if number and int(value) > 0:
        return str(value)
    raise InvalidInput(f"'model_version' must be a positive version number string, not {value!r}")


def encode_infer_response(
    response: InferResponse, binary: Mapping[str, bool]
) -> tuple[bytes, int | None]:
    """The v2 response body and, when some output is binary, the JSON header's length."""
    tensors: list[dict[str, Any]] = []
    chunks: list[bytes] = []
    for name, array in response.outputs.items():
        tensor: dict[str, Any] = {
            "name": name,
            "datatype": DATATYPE_NAMES[array.dtype],
            "shape": list(array.shape),
        }
        if binary.get(name):
            raw = np.ascontiguousarray(array).tobytes()
            tensor["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            tensor["data"] = array.ravel()
        tensors.append(tensor)
    body: dict[str, Any] = {
        "model_name": response.model_name,
        "model_version": response.model_version,
        "outputs": tensors,
    }
    if response.id is not None:
        body["id"] = response.id
    header = dumps(body)
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def tensor_from_parts(
    name: str,
    datatype: str,
    shape: Sequence[int],
    raw: bytes | None,
    values: list[Any] | None,
    max_rows: int,
) -> InputTensor:
    """One input tensor given as raw bytes or a flat list of values (the gRPC protocol's
    ``raw_input_contents`` and typed ``contents``), checked by the rules of the JSON and binary
    forms above."""
    if not name:
        raise InvalidInput("every input needs a non-empty name")
    where = f"input {name!r}"
    if datatype not in NUMPY_DTYPES:
        raise UnprocessableInput(
            f"{where}: datatype {datatype!r} is not one of {', '.join(NUMPY_DTYPES)}"
        )
    checked = checked_shape(shape, where, max_rows)
    if raw is None:
        data = array_from_json(values if values is not None else [], datatype, checked, where)
        return InputTensor(name, datatype, checked, data)
    dtype = NUMPY_DTYPES[datatype]
    expected = math.prod(checked) * dtype.itemsize
    if len(raw) != expected:
        raise UnprocessableInput(
            f"{where}: {len(raw)} bytes of raw data but shape {checked} of {datatype} needs "
            f"{expected}"
        )
    return InputTensor(name, datatype, checked, np.frombuffer(raw, dtype=dtype).reshape(checked))
