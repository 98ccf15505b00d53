"""The protocol's datatypes (``service.core.datatypes``) as numpy dtypes, both ways: the one numpy
view of the one table, for the runtime and both wire codecs (no onnxruntime import), and
onnxruntime's type strings read back as them."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from service.core.card import TensorSpec
from service.core.datatypes import DATATYPES

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(d.dtype) for name, d in DATATYPES.items()}
# BYTES as arrays hold it: numpy object arrays whose elements are ``str`` (what onnxruntime takes
# and returns for string tensors; inputs are decoded to it) or ``bytes`` (the classification
# extension's answers); the wires encode either.
BYTES_DTYPE: np.dtype[Any] = NUMPY_DTYPES["BYTES"]
DATATYPE_NAMES: dict[np.dtype[Any], str] = {dtype: name for name, dtype in NUMPY_DTYPES.items()}
# onnxruntime's type strings ("tensor(float)") -> Open Inference Protocol datatypes.
ORT_DATATYPES = {d.onnx_type: name for name, d in DATATYPES.items()}


def session_tensors(specs: Sequence[Any]) -> list[TensorSpec]:
    """onnxruntime's NodeArg list as card-style specs (symbolic or unknown axes become -1)."""
    tensors = []
    for arg in specs:
        shape = [d if isinstance(d, int) and d > 0 else -1 for d in (arg.shape or [])]
        tensors.append(TensorSpec(arg.name, ORT_DATATYPES.get(arg.type, arg.type), shape))
    return tensors


def zeros(spec: TensorSpec, size: int) -> np.ndarray:
    """A warm-up input: ``size`` rows on a leading -1 axis, 1 on any other dynamic one; BYTES
    as the text "0", which a graph that reads its strings as numbers (Triton's ``simple_string``:
    Cast) takes too, where an empty string would fail the run."""
    shape = [size if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(spec.shape)]
    dtype = NUMPY_DTYPES[spec.datatype]
    return np.full(shape, "0", dtype=dtype) if dtype.hasobject else np.zeros(shape, dtype=dtype)
