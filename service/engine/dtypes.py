"""The protocol's datatypes (``service.core.datatypes``) as numpy dtypes, both ways: the one numpy
view of the one table, for the runtime and both wire codecs (no onnxruntime import)."""

from __future__ import annotations

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


def zeros(spec: TensorSpec, size: int) -> np.ndarray:
    """A warm-up input: ``size`` rows on a leading -1 axis, 1 on any other dynamic one; BYTES
    as the text "0", which a graph that reads its strings as numbers (Triton's ``simple_string``:
    Cast) takes too, where an empty string would fail the run."""
    shape = [size if i == 0 and d == -1 else max(d, 1) for i, d in enumerate(spec.shape)]
    dtype = NUMPY_DTYPES[spec.datatype]
    return np.full(shape, "0", dtype=dtype) if dtype.hasobject else np.zeros(shape, dtype=dtype)
