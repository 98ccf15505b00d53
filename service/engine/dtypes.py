"""The protocol's datatypes (``service.core.datatypes``) as numpy dtypes, both ways: the one numpy
view of the one table, for the runtime and both wire codecs (no onnxruntime import)."""

from __future__ import annotations

from typing import Any

import numpy as np

from service.core.datatypes import DATATYPES

NUMPY_DTYPES: dict[str, np.dtype[Any]] = {name: np.dtype(d.dtype) for name, d in DATATYPES.items()}
# BYTES as outputs hold it: numpy object arrays of ``bytes`` (the classification extension's
# answer; no input is BYTES yet).
BYTES_DTYPE: np.dtype[Any] = np.dtype(object)
DATATYPE_NAMES: dict[np.dtype[Any], str] = {
    BYTES_DTYPE: "BYTES",
    **{dtype: name for name, dtype in NUMPY_DTYPES.items()},
}
