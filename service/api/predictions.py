"""The v1 answers' ``predictions``: the k most probable classes of each row.

numpy only, so the command-line client ranks gRPC results exactly as the server ranks REST ones
without importing onnxruntime (an import-linter contract).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

Predictions = list[list[dict[str, Any]]]  # per row: {"name", "index", "probability"}, best first
# The served version, the top-k classes per image, and (REST ``:classify``) the answer per image.
Classified = tuple[str, Predictions, list[str] | None]
UNCERTAIN = "uncertain"  # ``:classify``'s answer for an image under ``ABSTAIN_BELOW``


def top_k(probabilities: np.ndarray, class_names: Sequence[str], k: int) -> Predictions:
    """The k most probable classes of each row, most probable first (ties: the lower index)."""
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return [
        [{"name": class_names[j], "index": int(j), "probability": float(row[j])} for j in indices]
        for row, indices in zip(probabilities, order, strict=True)
    ]


def answers(predictions: Predictions, abstain_below: float) -> list[str]:
    """Per row: its top-1 class name, or ``UNCERTAIN`` when that class's probability is under
    ``abstain_below`` (0: never). With calibrated probabilities the threshold means what it says:
    the card's coverage table gives the accuracy and the share answered at each one."""
    return [
        UNCERTAIN if row[0]["probability"] < abstain_below else row[0]["name"]
        for row in predictions
    ]
