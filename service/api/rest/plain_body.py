"""The common v2 infer body decoded in one pass: ``{"inputs": [{"name", "shape", "datatype",
"data"}, ...]}`` holding numbers, with at most an ``id``, ``outputs`` asked for by name, the
``model_name`` and ``model_version`` that KServe's SDK writes in, and the one parameter
tritonclient's JSON carries (``binary_data_output`` of the request, ``binary_data`` of an
output). That is what the benchmarks, curl users, KServe's SDK and tritonclient send as JSON.

``decode_infer_request`` checks a body in layers (the request's fields, each tensor's fields,
shape, datatype and values), and each layer names what it refuses. Through the real server at 64
clients that cost 38 us of the 215 that the event loop's thread spent on a request
(docs/benchmarks.md, "The decode's fast lane"). ``plain_request`` checks a body of the common
form by the same rules in a few straight lines. Anything else is declined (None), and the layered
path decodes it and names any problem: a field more, a parameter besides those flags, a value
out of its datatype's range, BYTES or BOOL, an empty or scalar tensor. So this path never
refuses a request itself, and what it accepts it decodes exactly as the layered path does
(``tests/api/test_plain_body.py`` checks both on the same bodies).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import simdjson

from service.core.datatypes import DATATYPES
from service.core.errors import InvalidInput
from service.core.limits import MAX_ELEMENTS, MAX_RANK, MAX_TENSOR_NAME_CHARS, MAX_TENSORS
from service.core.version_policy import body_version
from service.dataplane.types import InferRequest, InputTensor, RequestedOutput

REQUEST_KEYS = frozenset({"id", "inputs", "outputs", "parameters", "model_name", "model_version"})
TENSOR_KEYS = frozenset({"name", "shape", "datatype", "data"})


@dataclass(frozen=True)
class _Numbers:
    """How a numeric datatype's JSON numbers are read: simdjson's buffer type ("d" doubles, "i"
    64-bit integers), the datatype's numpy dtype, and the bounds its values must lie in."""

    buffer: Literal["d", "i"]
    dtype: np.dtype[Any]
    low: float
    high: float


def _numbers_by_datatype() -> dict[str, _Numbers]:
    table: dict[str, _Numbers] = {}
    for name, datatype in DATATYPES.items():
        dtype = np.dtype(datatype.dtype)
        if dtype.kind == "f":  # a value past the largest finite one would be cast to infinity
            top = float(np.finfo(dtype).max)
            table[name] = _Numbers("d", dtype, -top, top)
        elif dtype.kind in "iu" and datatype.value_range is not None:
            table[name] = _Numbers("i", dtype, *datatype.value_range)
    return table


NUMBERS = _numbers_by_datatype()  # BOOL and BYTES have none: declined


def plain_request(doc: Any, max_rows: int) -> InferRequest | None:
    """``doc`` (simdjson's lazy view of a JSON body) as the ``InferRequest`` that
    ``decode_infer_request`` makes of it, or None where it is not of the common form."""
    if not isinstance(doc, simdjson.Object):
        return None
    keys = list(doc.keys())
    if len(set(keys)) != len(keys) or not REQUEST_KEYS.issuperset(keys):
        return None
    # (``get`` of a key that is not there costs simdjson an exception: 2 us)
    request_id = doc["id"] if "id" in keys else None
    if request_id is not None and type(request_id) is not str:
        return None
    model_name = doc["model_name"] if "model_name" in keys else None
    if model_name is not None and type(model_name) is not str:
        return None
    try:  # the layered path's rule; a version it refuses is declined
        version = body_version(doc["model_version"]) if "model_version" in keys else None
    except InvalidInput:
        return None
    binary = (
        _flag(doc["parameters"], "binary_data_output", False) if "parameters" in keys else False
    )
    if binary is None:
        return None
    inputs = _inputs(doc["inputs"], max_rows) if "inputs" in keys else None
    outputs = _outputs(doc["outputs"], binary) if "outputs" in keys else []
    if inputs is None or outputs is None:
        return None
    return InferRequest(request_id, inputs, outputs, binary, model_name or None, version)


def _flag(parameters: Any, key: str, default: bool) -> bool | None:
    """The binary flag of parameters holding at most ``key``, a boolean (``default`` without
    it); None for any other parameters (a timeout, a shared memory region, a classification)."""
    if not isinstance(parameters, simdjson.Object):
        return None
    count = len(parameters)
    if count == 0:
        return default
    value = parameters[key] if count == 1 and key in parameters else None
    return value if type(value) is bool else None


def _name(value: Any) -> str | None:
    if type(value) is not str or not 0 < len(value) <= MAX_TENSOR_NAME_CHARS:
        return None
    return value


def _inputs(raw: Any, max_rows: int) -> list[InputTensor] | None:
    if not isinstance(raw, simdjson.Array) or not 0 < len(raw) <= MAX_TENSORS:
        return None
    inputs: list[InputTensor] = []
    for tensor in raw:
        if not isinstance(tensor, simdjson.Object) or len(tensor) != len(TENSOR_KEYS):
            return None
        if set(tensor.keys()) != TENSOR_KEYS:  # four keys, four names: each once
            return None
        name, datatype = _name(tensor["name"]), tensor["datatype"]
        if name is None or not isinstance(datatype, str) or datatype not in NUMBERS:
            return None
        numbers = NUMBERS[datatype]
        shape = _shape(tensor["shape"], max_rows)
        data = None if shape is None else _values(tensor["data"], numbers, shape)
        if shape is None or data is None:
            return None
        inputs.append(InputTensor(name, datatype, shape, data))
    return inputs


def _shape(raw: Any, max_rows: int) -> list[int] | None:
    """A shape of positive integers that ``checked_shape`` accepts as it is."""
    if not isinstance(raw, simdjson.Array) or not 0 < len(raw) <= MAX_RANK:
        return None
    shape: list[Any] = raw.as_list()
    if not all(type(d) is int and d > 0 for d in shape):
        return None
    if shape[0] > max_rows or math.prod(shape) > MAX_ELEMENTS:
        return None
    return shape


def _values(raw: Any, numbers: _Numbers, shape: list[int]) -> np.ndarray | None:
    """The numbers (flat or nested, row-major: as ``array_from_json`` reads them) in the
    datatype, when there are as many as ``shape`` holds and each lies in the datatype's range."""
    if not isinstance(raw, simdjson.Array):
        return None
    try:
        buffer = raw.as_buffer(of_type=numbers.buffer)
    except (TypeError, ValueError):  # not all numbers, or past 64-bit integers
        return None
    values = np.frombuffer(buffer, dtype=np.float64 if numbers.buffer == "d" else np.int64)
    if values.size != math.prod(shape):
        return None
    if not (values.min() >= numbers.low and values.max() <= numbers.high):
        return None
    return values.astype(numbers.dtype, copy=False).reshape(shape)


def _outputs(raw: Any, binary: bool) -> list[RequestedOutput] | None:
    """Outputs by name, each binary as its ``binary_data`` says, else as the request's is."""
    if not isinstance(raw, simdjson.Array) or len(raw) > MAX_TENSORS:
        return None
    outputs: list[RequestedOutput] = []
    for item in raw:
        if not isinstance(item, simdjson.Object):
            return None
        keys = list(item.keys())
        if keys != ["name"] and sorted(keys) != ["name", "parameters"]:
            return None
        name = _name(item["name"])
        flag = _flag(item["parameters"], "binary_data", binary) if len(keys) == 2 else binary
        if name is None or flag is None:
            return None
        outputs.append(RequestedOutput(name, flag))
    return outputs
