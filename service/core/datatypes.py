"""The Open Inference Protocol datatypes the service accepts, and what each is in numpy,
onnxruntime and gRPC: one table for the card, the runtime, both codecs and the gRPC adapter.

numpy dtypes go by name (``np.dtype(datatype.dtype)`` where numpy is allowed), so this module
stays standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Datatype:
    """One protocol datatype (``name``, e.g. "FP32") and its equivalents elsewhere."""

    name: str
    dtype: str  # numpy's name for it: ``np.dtype(dtype)``
    # Bytes per value: what raw and binary tensor data are counted in; None for BYTES, whose
    # elements each carry their own 4-byte little-endian length (Triton's layout).
    size: int | None
    onnx_type: str  # onnxruntime's type string of a graph input or output
    # Inclusive bounds that JSON integers are checked against before the cast, which would wrap
    # them silently (for INT64: a tensor whose values all lie in 2**63..2**64-1 reads as
    # uint64); None where nothing is checked: floats, BOOL and BYTES.
    value_range: tuple[int, int] | None
    contents_field: str | None  # gRPC ``InferTensorContents`` field; None: raw bytes only


def _integer(name: str, dtype: str, bits: int, signed: bool, field: str) -> Datatype:
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    return Datatype(name, dtype, bits // 8, f"tensor({dtype})", (low, high), field)


# In the order error messages list them ("is not one of UINT8, FP32, ..."): the image models'
# types first, as before the others were added.
DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        _integer("UINT8", "uint8", 8, False, "uint_contents"),
        Datatype("FP32", "float32", 4, "tensor(float)", None, "fp32_contents"),
        Datatype("FP16", "float16", 2, "tensor(float16)", None, None),  # raw only, as Triton
        _integer("INT64", "int64", 64, True, "int64_contents"),
        _integer("INT32", "int32", 32, True, "int_contents"),
        Datatype("BOOL", "bool", 1, "tensor(bool)", None, "bool_contents"),
        _integer("INT8", "int8", 8, True, "int_contents"),
        _integer("INT16", "int16", 16, True, "int_contents"),
        _integer("UINT16", "uint16", 16, False, "uint_contents"),
        _integer("UINT32", "uint32", 32, False, "uint_contents"),
        _integer("UINT64", "uint64", 64, False, "uint64_contents"),
        Datatype("FP64", "float64", 8, "tensor(double)", None, "fp64_contents"),
        # ONNX string tensors: onnxruntime's Python API takes and returns them as numpy object
        # arrays of ``str``; the wires carry raw bytes (JSON: strings).
        Datatype("BYTES", "object", None, "tensor(string)", None, "bytes_contents"),
    )
}
