"""Room in the body budget for a tensor model's answer before it runs: a model whose outputs
outgrow its inputs (a ``Tile``: 4 MB a row from 16 bytes) made every answer before the budget
saw it, so 80 calls of 16 kB in all had 1 GB of output a run computed, 73 of them only to be
refused. The card's output shapes give what a run will make, where they fix every axis past the
batch one; that much is held while the model runs (503 past the budget, before any work), then
given back for the answer itself to be counted until it is sent."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from service.core.body_budget import UNREFUSED_ANSWER_BYTES, BodyBudget
from service.core.datatypes import DATATYPES
from service.dataplane.types import RequestedOutput
from service.engine.runtime import ModelRuntime


def answer_bytes_per_row(model: ModelRuntime, outputs: Sequence[RequestedOutput]) -> int | None:
    """Bytes a row of ``model``'s answer carries: every output, or those ``outputs`` asks for
    that are not written to shared memory; None when the card leaves an axis past the batch one
    open, or an output is BYTES."""
    asked = {o.name for o in outputs}
    answered = {o.name for o in outputs if o.shared_memory is None}
    size = 0
    for spec in model.card.outputs:
        if asked and spec.name not in answered:
            continue
        datatype = DATATYPES.get(spec.datatype)
        itemsize = None if datatype is None else datatype.size
        axes = spec.shape[1:] if model.batched else spec.shape
        if itemsize is None or any(axis < 0 for axis in axes):
            return None
        size += itemsize * math.prod(axes)
    return size


@contextmanager
def answer_room(
    budget: BodyBudget, model: ModelRuntime, rows: int, outputs: Sequence[RequestedOutput]
) -> Iterator[None]:
    """Hold room for the answer of ``rows`` rows while the model makes it (``BodyBudgetFull``
    at once when there is none); nothing for an answer under ``UNREFUSED_ANSWER_BYTES`` or
    one whose size the card leaves open."""
    per_row = answer_bytes_per_row(model, outputs)
    size = 0 if per_row is None else per_row * rows
    held = budget.take_answer(size) if size > UNREFUSED_ANSWER_BYTES else 0
    try:
        yield
    finally:
        budget.give(held)
