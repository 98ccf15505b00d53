"""The protocol's datatypes (``service.core.datatypes``) as numpy dtypes, both ways: the one numpy
view of the one table, for the runtime and both wire codecs (no onnxruntime import)."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.core.datatypes import DATATYPES

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(d.dtype) for name, d in DATATYPES.items()}
# BYTES as arrays hold it: numpy object arrays whose elements are ``str`` (what onnxruntime takes
# and returns for string tensors; inputs are decoded to it) or ``bytes`` (the classification
# extension's answers); the wires encode either.
BYTES_DTYPE: np.dtype[Any] = NUMPY_DTYPES["BYTES"]
DATATYPE_NAMES: dict[np.dtype[Any], str] = {dtype: name for name, dtype in NUMPY_DTYPES.items()}
