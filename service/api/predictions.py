"""The v1 answers' ``predictions``: the k most probable classes of each row.

numpy only, so the command-line client ranks gRPC results exactly as the server ranks REST ones
without importing onnxruntime (an import-linter contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Predictions = list[list[dict[str, Any]]]  # per row: {"name", "index", "probability"}, best first


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> Predictions:
    """The k most probable classes of each row, most probable first (ties: the lower index)."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [{"name": class_names[j], "index": int(j), "probability": float(row[j])} for j in indices]
        for row, indices in zip(probabilities, order, strict=True)
    ]
