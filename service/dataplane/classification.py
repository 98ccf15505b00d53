"""Triton's classification extension: an FP output's rows as BYTES tensors of the top k
``"score:index:label"`` strings (``"score:index"`` where the output has no labels), best first.

Ranked as ``:classify`` ranks (``service.api.predictions.top_k``: a stable sort, ties to the lower
index); scores written as Triton writes them (C++ ``std::to_string``: six decimals).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from service.core.card import TensorSpec
from service.core.errors import InvalidInput
from service.dataplane.types import RequestedOutput
from service.engine.work_pool import WorkPool

FLOAT_DATATYPES = frozenset({"FP16", "FP32", "FP64"})
# Above this many strings (images x k) the formatting leaves the event loop for the work pool:
# about 0.55 us a string here (``python -m bench classify-cost``), so at most ~0.3 ms on the loop,
# what a hop to the pool costs.
INLINE_STRINGS = 512
# Above this many scores ranked the ranking leaves the loop too: a 16,384-wide output of 512 rows
# held it 0.9 s (a helper's audit), sorted whole.
INLINE_SCORES = 16_384
SCALAR = "classification needs rows of scores, not a scalar"


def check_classified(
    requested: Sequence[RequestedOutput], counts: Mapping[str, int], outputs: Sequence[TensorSpec]
) -> None:
    """Every output asked to be classified is one of the model's FP outputs and is answered in
    the reply (not written to shared memory); 400 naming the output otherwise."""
    specs = {spec.name: spec for spec in outputs}
    regions = {o.name for o in requested if o.shared_memory is not None}
    for name in counts:
        spec = specs.get(name)
        if spec is None:
            raise InvalidInput(
                f"output {name!r}: classification asked of an output the model does not have "
                f"(it has {sorted(specs)})"
            )
        if spec.datatype not in FLOAT_DATATYPES:
            raise InvalidInput(
                f"output {name!r}: classification needs a floating-point output, this one is "
                f"{spec.datatype}"
            )
        if name in regions:
            raise InvalidInput(
                f"output {name!r}: a classification is answered in the reply, not in shared memory"
            )
        if not spec.shape:
            raise InvalidInput(f"output {name!r}: {SCALAR}")


def classify_rows(scores: np.ndarray, k: int, labels: Sequence[str]) -> np.ndarray:
    """``(batch, min(k, row size))`` BYTES elements (numpy object array of ``bytes``) for an output
    of ``(batch, ...)`` scores; ``labels`` name the indices when there is one per score."""
    if scores.ndim == 0:  # a graph whose output's shape its card does not tell
        raise InvalidInput(SCALAR)
    rows = scores.reshape(scores.shape[0], -1)
    k = min(k, rows.shape[1])
    order = top_k_indices(rows, k)
    named = len(labels) == rows.shape[1]
    found = np.empty(order.shape, dtype=object)
    for i, (row, indices) in enumerate(zip(rows, order, strict=True)):
        found[i] = [
            (f"{float(row[j]):f}:{j}:{labels[j]}" if named else f"{float(row[j]):f}:{j}").encode()
            for j in indices.tolist()
        ]
    return found


def top_k_indices(rows: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` best indices, best first, ties to the lower index: the first ``k`` of a
    stable descending sort, found without sorting whole rows where ``k`` is a small part of them
    (0.12 s against 0.74 s for 512 rows of 16,384 scores), the chosen ones sorted alone."""
    if k * 8 >= rows.shape[1] or np.isnan(rows).any():
        return np.argsort(-rows, axis=1, kind="stable")[:, :k]
    kth = -np.partition(-rows, k - 1, axis=1)[:, k - 1 : k]  # each row's k-th best score
    above, tied = rows > kth, rows == kth
    room = k - above.sum(axis=1, keepdims=True)  # filled by the lowest-index ties
    chosen = above | (tied & (np.cumsum(tied, axis=1) <= room))
    index = np.nonzero(chosen)[1].reshape(len(rows), k)
    order = np.lexsort((index, -np.take_along_axis(rows, index, axis=1)), axis=1)
    return np.take_along_axis(index, order, axis=1)


def classify_outputs(
    outputs: dict[str, np.ndarray], counts: Mapping[str, int], labels: Sequence[str]
) -> dict[str, np.ndarray]:
    """``outputs`` with each one named in ``counts`` replaced by its classification."""
    found = dict(outputs)
    for name, k in counts.items():
        found[name] = classify_rows(outputs[name], k, labels)
    return found


async def classify(
    work: WorkPool,
    outputs: dict[str, np.ndarray],
    counts: Mapping[str, int],
    labels: Sequence[str],
) -> dict[str, np.ndarray]:
    """``classify_outputs``, on the work pool when it formats many strings (images x k) or
    ranks many scores."""
    strings = scores = 0
    for name, k in counts.items():
        array = outputs[name]
        rows = array.shape[0] if array.ndim else 1
        strings += rows * min(k, array.size // max(rows, 1))
        scores += array.size
    light = strings <= INLINE_STRINGS and scores <= INLINE_SCORES
    return await work.run_here_if_light(light, classify_outputs, outputs, counts, labels)
