"""Feedback: the true class of answered images, written onto their prediction log records.

A label is a class name or index of the model that answered; a repeat is idempotent and a
different label for the same record replaces the earlier one (the last one wins)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from service.core.errors import RecordNotFound, ServingError, UnprocessableInput
from service.dataplane import prediction_store as store
from service.dataplane.prediction_log import PredictionLog

MAX_FEEDBACK_ITEMS = 1024  # labels in one request (413 past it)
FLUSH_WAIT_S = 2.0  # how long feedback waits for records still queued for the writer


@dataclass(frozen=True)
class Feedback:
    id: str  # the request id the answer carried (X-Request-ID, or the v2/gRPC ``id`` given)
    label: str | int  # class name or index
    item: int = 0  # which image of the request's batch


def class_index(label: str | int, class_names: Sequence[str]) -> int:
    """The class index ``label`` names; 422 when it names none."""
    if isinstance(label, int) and not isinstance(label, bool):
        if 0 <= label < len(class_names):
            return label
    elif isinstance(label, str) and label in class_names:
        return list(class_names).index(label)
    shown = repr(label)[:80]
    raise UnprocessableInput(
        f"label {shown} is not a class of the model (0..{len(class_names) - 1} or "
        f"{', '.join(class_names[:20])})"
    )


def apply_feedback(
    log: PredictionLog,
    items: Sequence[Feedback],
    class_names: Callable[[str, int], Sequence[str]],
) -> None:
    """Check every item (404 unknown id, 422 bad label), then label them all in one transaction.
    Runs off the event loop: it waits for queued records and talks to the database."""
    ids = [f.id for f in items]
    found = store.find(log.engine, ids)
    if any((f.id, f.item) not in found for f in items):
        log.flush(FLUSH_WAIT_S)  # answered a moment ago: its record may still be queued
        found = store.find(log.engine, ids)
    labels = []
    for f in items:
        where = found.get((f.id, f.item))
        if where is None:
            raise RecordNotFound(f"no prediction with id {f.id[:128]!r} and item {f.item}")
        labels.append((f.id, f.item, class_index(f.label, class_names(*where))))
    store.label(log.engine, labels)


def names_or_empty(lookup: Callable[[str, int], Sequence[str]]) -> Callable[[str, int], list[str]]:
    """``lookup``'s class names, or none when the model is gone (every label is then 422)."""

    def names(model: str, version: int) -> list[str]:
        try:
            return list(lookup(model, version))
        except ServingError:
            return []

    return names
