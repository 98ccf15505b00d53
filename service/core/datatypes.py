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
    size: int  # bytes per value: what raw and binary tensor data are counted in
    onnx_type: str  # onnxruntime's type string of a graph input or output
    # Inclusive bounds that JSON integers are checked against before the cast, which would wrap
    # them silently (for INT64: a tensor whose values all lie in 2**63..2**64-1 reads as
    # uint64); None where nothing is checked: floats and BOOL.
    value_range: tuple[int, int] | None
    contents_field: str | None  # gRPC ``InferTensorContents`` field; None: raw bytes only


# In the order error messages list them ("is not one of UINT8, FP32, ...").
DATATYPES: dict[str, Datatype] = {
    d.name: d
    for d in (
        Datatype("UINT8", "uint8", 1, "tensor(uint8)", (0, 255), "uint_contents"),
        Datatype("FP32", "float32", 4, "tensor(float)", None, "fp32_contents"),
        Datatype("FP16", "float16", 2, "tensor(float16)", None, None),
        Datatype("INT64", "int64", 8, "tensor(int64)", (-(2**63), 2**63 - 1), "int64_contents"),
        Datatype("INT32", "int32", 4, "tensor(int32)", (-(2**31), 2**31 - 1), "int_contents"),
        Datatype("BOOL", "bool", 1, "tensor(bool)", None, "bool_contents"),
    )
}
