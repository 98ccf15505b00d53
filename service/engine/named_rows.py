"""``NamedRows``: one request's inputs to a tensor model, by name, as the batcher and the runtime
take them. An image classifier's request stays a bare array (its hot path pays for nothing)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class NamedRows:
    """Several named arrays that share their leading (batch) axis, sliced and joined together.

    ``rows`` is what one run counts: the leading axis of a batched model's inputs, 1 for a model
    that is not batched (Triton's ``max_batch_size: 0``, where a request is one run).
    """

    __slots__ = ("arrays", "rows")

    def __init__(self, arrays: dict[str, np.ndarray], rows: int) -> None:
        self.arrays = arrays
        self.rows = rows

    def __len__(self) -> int:
        return self.rows

    def __getitem__(self, index: slice) -> NamedRows:
        """The same rows of every input (only batched inputs are ever sliced)."""
        parts = {name: array[index] for name, array in self.arrays.items()}
        start, stop, _ = index.indices(self.rows)
        return NamedRows(parts, max(0, stop - start))

    @staticmethod
    def concatenate(parts: Sequence[NamedRows]) -> NamedRows:
        """One batch of several requests: each input joined along axis 0, in order."""
        names = parts[0].arrays
        arrays = {name: np.concatenate([p.arrays[name] for p in parts]) for name in names}
        return NamedRows(arrays, sum(p.rows for p in parts))


def concatenate(parts: Sequence[np.ndarray | NamedRows]) -> np.ndarray | NamedRows:
    """Several requests' rows as one batch, whichever kind of model they are for."""
    first = parts[0]
    if isinstance(first, NamedRows):
        return NamedRows.concatenate(parts)  # type: ignore[arg-type]
    return np.concatenate(parts)  # type: ignore[arg-type]
