"""Tensors as raw bytes, both ways, for the binary extension, gRPC's raw contents and shared
memory: numeric tensors as numpy lays them out (read in place), BYTES tensors as Triton does, each
element after its 4-byte little-endian length.

A BYTES input is checked as it is read: every length inside the data, nothing left over, and each
element UTF-8 text, since onnxruntime's Python API takes string tensors as ``str`` only (it would
feed ``bytes`` as their ``repr``). The work is bounded by the data's size: a count of elements
that could not fit is refused before any is read.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable
from typing import Any

import numpy as np

from service.core.errors import UnprocessableInput
from service.engine.dtypes import BYTES_DTYPE, NUMPY_DTYPES

LENGTH = struct.Struct("<I")  # the 4-byte little-endian length before each BYTES element


def as_bytes(element: Any) -> bytes:
    """A BYTES element (``str`` from onnxruntime, ``bytes`` from the classification extension)
    as the raw bytes the wires carry."""
    return element.encode() if isinstance(element, str) else bytes(element)


def tensor_to_bytes(array: np.ndarray) -> bytes:
    """``array``'s values as raw tensor data, row-major."""
    if array.dtype.hasobject:
        return b"".join(
            LENGTH.pack(len(raw)) + raw for raw in map(as_bytes, array.ravel().tolist())
        )
    return np.ascontiguousarray(array).tobytes()


def tensor_from_bytes(
    raw: bytes, datatype: str, shape: list[int], where: str, kind: str = "binary"
) -> np.ndarray:
    """``raw`` as a tensor of ``shape`` in ``datatype``: read in place for numbers; for BYTES,
    its elements decoded to ``str``. Data of any other length than the shape needs is a 422
    naming the tensor (``where``) and the ``kind`` of data."""
    count = math.prod(shape)
    dtype = NUMPY_DTYPES[datatype]
    if dtype == BYTES_DTYPE:
        return strings_array(_split_elements(raw, count, where, kind), shape, where)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise UnprocessableInput(
            f"{where}: {len(raw)} bytes of {kind} data but shape {shape} of {datatype} needs "
            f"{expected}"
        )
    return np.frombuffer(raw, dtype=dtype).reshape(shape)


def _split_elements(raw: bytes, count: int, where: str, kind: str) -> list[str]:
    """The ``count`` length-prefixed elements of ``raw``, which must hold them exactly, decoded
    (one pass: about 0.6 us an element here)."""
    end = len(raw)
    if count * LENGTH.size > end:  # before the loop: the count is the client's to choose
        raise UnprocessableInput(
            f"{where}: {end} bytes of {kind} data cannot hold {count} BYTES elements "
            f"(each takes a {LENGTH.size}-byte length)"
        )
    unpack, prefix = LENGTH.unpack_from, LENGTH.size
    strings: list[str] = []
    offset = index = 0
    try:
        for index in range(count):
            if offset + prefix > end:
                raise UnprocessableInput(
                    f"{where}: the {kind} data ends at element {index} of {count} BYTES elements"
                )
            start = offset + prefix
            offset = start + unpack(raw, offset)[0]
            if offset > end:
                raise UnprocessableInput(
                    f"{where}: BYTES element {index} claims {offset - start} bytes but the "
                    f"{kind} data has {end - start} left"
                )
            strings.append(raw[start:offset].decode())
    except UnicodeDecodeError:
        raise _not_text(where, index) from None
    if offset != end:
        raise UnprocessableInput(
            f"{where}: {end - offset} bytes of {kind} data after the last of {count} BYTES elements"
        )
    return strings


def _not_text(where: str, index: int) -> UnprocessableInput:
    return UnprocessableInput(
        f"{where}: BYTES element {index} is not UTF-8 text (onnxruntime's string tensors hold text)"
    )


def strings_array(elements: Iterable[bytes | str], shape: list[int], where: str) -> np.ndarray:
    """BYTES elements as the object array of ``str`` onnxruntime takes (raw ones decoded); an
    element that is not UTF-8 is a 422 naming it."""
    strings: list[str] = []
    for index, element in enumerate(elements):
        if isinstance(element, str):
            strings.append(element)
            continue
        try:
            strings.append(element.decode())
        except UnicodeDecodeError:
            raise _not_text(where, index) from None
    array = np.empty(len(strings), dtype=BYTES_DTYPE)
    array[:] = strings
    return array.reshape(shape)
