"""Tensor data as the wires carry it (lists of values, flat or nested; raw bytes) <-> checked
numpy arrays: the rules both codecs, REST's and gRPC's, and v1's pixel arrays share, so a tensor is
refused with the same message whichever way it came.

Every datatype goes through the same functions; what differs between them (numpy dtype, bounds,
what JSON values it takes) comes from the one table, ``service.core.datatypes``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from service.core.datatypes import DATATYPES
from service.core.errors import InvalidInput, UnprocessableInput, shown
from service.engine.dtypes import NUMPY_DTYPES
from service.engine.tensor_bytes import as_bytes, strings_array, tensor_from_bytes

# What JSON values each kind of numpy dtype takes, and what a client is told it must send.
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "b": (bool,),
    "i": (int,),
    "u": (int,),
    "f": (int, float),
    "O": (str,),
}
ARRAY_KINDS = {"b": "b", "i": "iu", "u": "iu", "f": "iuf"}  # numpy arrays' kinds each takes
WANTED = {"b": "true or false", "i": "integers", "u": "integers", "f": "numbers", "O": "strings"}
FOUND_TYPES = {bool: "booleans", int: "integers", float: "fractions", str: "strings"}
FOUND_TYPES |= {type(None): "nulls", dict: "objects"}
FOUND_KINDS = {"b": "booleans", "U": "strings", "O": "mixed values", "f": "fractions"}


def check_datatype(datatype: Any, where: str) -> str:
    """``datatype``; 422 if it is not in the protocol's table (``service.core.datatypes``)."""
    if not isinstance(datatype, str) or datatype not in NUMPY_DTYPES:
        given = shown(datatype) if isinstance(datatype, str) else type(datatype).__name__
        raise UnprocessableInput(
            f"{where}: datatype {given} is not one of {', '.join(NUMPY_DTYPES)}"
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
    """``raw`` as an array of ``shape`` in ``datatype`` (``tensor_from_bytes``: numbers read in
    place, BYTES length-prefixed); ``declared``, the size the wire gives, must be what arrived."""
    if declared is not None and declared != len(raw):
        raise UnprocessableInput(
            f"{where}: binary_data_size is {declared} but the body has {len(raw)} bytes left for it"
        )
    return tensor_from_bytes(raw, datatype, shape, where, kind)


def tensor_json(array: np.ndarray) -> Any:
    """An output as a JSON tensor's flat ``data``: numbers as numpy (orjson writes them), BYTES
    elements as strings, as Triton (bytes that are not UTF-8 have their bad bytes replaced)."""
    if array.dtype.hasobject:
        return bytes_strings(array)
    return array.ravel()


def bytes_strings(array: np.ndarray) -> list[str]:
    """A BYTES output's elements as JSON strings."""
    return [
        e if isinstance(e, str) else as_bytes(e).decode("utf-8", "replace")
        for e in array.ravel().tolist()
    ]


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


def holds_strings(data: list[Any]) -> bool:
    """Whether nested lists hold a string anywhere (numpy arrays among them are numbers)."""
    return any(isinstance(item, str) for item in _flatten(data))


def _checked_values(data: list[Any], datatype: str, where: str) -> list[Any]:
    """``data``'s values in row-major order, each of a JSON type ``datatype`` takes (looked at
    before numpy is: ``np.array`` would make numbers of strings, or a string array as wide as
    the longest one for every element)."""
    types = set(map(type, data))
    if list in types:
        data = _flatten(data)
        types = set(map(type, data))
    kind = NUMPY_DTYPES[datatype].kind
    wrong = types.difference(JSON_TYPES[kind])
    if wrong:
        first = min(wrong, key=lambda t: t.__name__)  # the same name for the same data
        found = FOUND_TYPES.get(first, "mixed values")
        raise UnprocessableInput(f"{where}: {datatype} data must be {WANTED[kind]}, found {found}")
    return data


def array_from_json(
    data: Any, datatype: str, shape: list[int], where: str, *, nested: bool = False
) -> np.ndarray:
    """JSON data (flat or nested, row-major) as an array of ``shape`` in ``datatype``.

    ``nested`` requires the nesting itself to have ``shape`` (v1 instances), not just its length.
    A number past a float datatype's range is refused, not made infinite (JSON has no infinity,
    so any in the result is an overflow).
    """
    with np.errstate(over="ignore"):
        array = _json_array(data, datatype, shape, where, nested)
    dtype = array.dtype
    if dtype.kind == "f" and not np.isfinite(array).all():
        top = float(np.finfo(dtype).max)
        raise UnprocessableInput(f"{where}: {datatype} values must lie in -{top:g}..{top:g}")
    return array


def _json_array(data: Any, datatype: str, shape: list[int], where: str, nested: bool) -> np.ndarray:
    dtype = NUMPY_DTYPES[datatype]
    if isinstance(data, np.ndarray) and dtype.hasobject:
        data = data.tolist()  # BYTES: its elements looked at one by one, as JSON's are
    if isinstance(data, np.ndarray):  # already numbers (``loads_infer_request``)
        array = data
    elif not isinstance(data, list):
        raise InvalidInput(f"{where}.data must be a JSON array")
    elif not nested:
        return _array_from_values(_checked_values(data, datatype, where), datatype, shape, where)
    else:  # v1's pixel rows, some already numpy arrays (``json_wire.loads_object``)
        if not dtype.hasobject and holds_strings(data):  # before np.array, as in _checked_values
            kind = dtype.kind
            raise UnprocessableInput(
                f"{where}: {datatype} data must be {WANTED[kind]}, found strings"
            )
        try:
            array = np.array(data, dtype=object if dtype.hasobject else None)
        except (ValueError, TypeError):
            raise UnprocessableInput(
                f"{where}.data is ragged or mixes types; expected {datatype} numbers"
            ) from None
    if nested and list(array.shape) != shape:
        raise UnprocessableInput(
            f"{where}: pixel array of shape {list(array.shape)}, expected {shape}"
        )
    _check_count(array.size, shape, where)
    if array.size == 0:
        return np.zeros(shape, dtype=NUMPY_DTYPES[datatype])  # no elements: nothing to fill
    return _as_datatype(array, datatype, shape, where)


def _check_count(count: int, shape: list[int], where: str) -> None:
    expected = math.prod(shape)
    if count != expected:
        raise UnprocessableInput(
            f"{where}: data holds {count} values but shape {shape} needs {expected}"
        )


def _array_from_values(
    values: Sequence[Any], datatype: str, shape: list[int], where: str
) -> np.ndarray:
    """Flat values of the Python types ``datatype`` takes as its array, exactly: integers are
    checked against its bounds as Python integers (numpy would read a list mixing 0 and 2**64-1
    as floats)."""
    _check_count(len(values), shape, where)
    dtype = NUMPY_DTYPES[datatype]
    if dtype.hasobject:
        array = np.empty(len(values), dtype=dtype)
        array[:] = values
        return array.reshape(shape)
    value_range = DATATYPES[datatype].value_range
    if value_range is not None and values:
        low, high = value_range
        if min(values) < low or max(values) > high:
            raise UnprocessableInput(f"{where}: {datatype} values must lie in {low}..{high}")
    try:
        return np.array(values, dtype=dtype).reshape(shape)
    except OverflowError:  # an integer past what a float holds
        raise UnprocessableInput(f"{where}: a value is out of {datatype}'s range") from None


def _as_datatype(array: np.ndarray, datatype: str, shape: list[int], where: str) -> np.ndarray:
    """``array`` (values of a JSON type ``datatype`` takes, or numbers) cast to ``datatype``,
    refused if the cast would change a value: integers past the datatype's bounds."""
    kind = NUMPY_DTYPES[datatype].kind
    if kind == "O":
        if not all(isinstance(element, str) for element in array.flat):
            raise UnprocessableInput(f"{where}: {datatype} data must be strings")
        return array.reshape(shape)
    if array.dtype.kind not in ARRAY_KINDS[kind]:
        found = FOUND_KINDS.get(array.dtype.kind, array.dtype.name)
        raise UnprocessableInput(f"{where}: {datatype} data must be {WANTED[kind]}, found {found}")
    value_range = DATATYPES[datatype].value_range
    if value_range is not None:
        low, high = value_range
        if array.min() < low or array.max() > high:
            raise UnprocessableInput(f"{where}: {datatype} values must lie in {low}..{high}")
    return array.astype(NUMPY_DTYPES[datatype], copy=False).reshape(shape)


def array_from_values(
    values: Sequence[Any] | np.ndarray, datatype: str, shape: list[int], where: str
) -> np.ndarray:
    """gRPC's typed contents (values protobuf has already typed: numbers as an array of their
    field's type, BYTES as a list) as an array of ``shape`` in ``datatype``: counted, bounds
    checked, BYTES decoded."""
    if isinstance(values, np.ndarray):  # counted and cast as JSON's numbers already in numpy
        return _json_array(values, datatype, shape, where, nested=False)
    if NUMPY_DTYPES[datatype].hasobject:
        _check_count(len(values), shape, where)
        return strings_array(values, shape, where)
    return _array_from_values(values, datatype, shape, where)
