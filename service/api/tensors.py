"""Tensor data as the wires carry it (lists of values, flat or nested; raw bytes) -> checked numpy
arrays: the rules both codecs, REST's and gRPC's, and v1's pixel arrays share, so a tensor is
refused with the same message whichever way it came."""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from service.core.datatypes import DATATYPES
from service.core.errors import InvalidInput, UnprocessableInput
from service.engine.dtypes import NUMPY_DTYPES


def check_datatype(datatype: Any, where: str) -> str:
    """``datatype``; 422 if it is not in the protocol's table (``service.core.datatypes``)."""
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        raise UnprocessableInput(
            f"{where}: datatype {datatype!r} is not one of {', '.join(NUMPY_DTYPES)}"
        )
    return datatype


def array_from_bytes(
    raw: bytes,
    datatype: str,
    shape: list[int],
    where: str,
    *,
    declared: int | None = None,
    kind: str = "binary",
) -> np.ndarray:
    """``raw`` read in place as an array of ``shape`` in ``datatype``; its length (and the
    ``declared`` size, if the wire gives one) must be what the shape needs."""
    dtype = NUMPY_DTYPES[datatype]
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected or (declared is not None and declared != expected):
        raise UnprocessableInput(
            f"{where}: {len(raw)} bytes of {kind} data but shape {shape} of {datatype} needs "
            f"{expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


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


def bytes_elements(array: np.ndarray) -> bytes:
    """A BYTES output (numpy object array of ``bytes``) as raw and binary tensors carry it: each
    element after its 4-byte little-endian length, Triton's layout. Callers test
    ``array.dtype.hasobject`` first, so numeric outputs pay one attribute read."""
    return b"".join(struct.pack("<I", len(element)) + element for element in array.ravel())


def bytes_strings(array: np.ndarray) -> list[str]:
    """A BYTES output as a JSON tensor's flat ``data``: its elements as strings, as Triton."""
    return [element.decode("utf-8", "replace") for element in array.ravel()]
