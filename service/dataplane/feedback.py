"""Feedback: the true class of answered images, written onto their prediction log records.

A label is a class name or index of the model that answered; a repeat is idempotent and a
different label for the same record replaces the earlier one (the last one wins), except that an
open label never replaces an admin's: a different one is a 409 for the whole request, the same
one a 200 that leaves the admin's. Each label records who gave it (``prediction_store.ADMIN`` or
``OPEN``): the retrain trusts admins' only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from service.core.errors import (
    LabelConflict,
    Overloaded,
    RecordNotFound,
    ServingError,
    UnprocessableInput,
)
from service.dataplane import label_store as store
from service.dataplane.prediction_log import PredictionLog
from service.dataplane.prediction_store import Record

MAX_FEEDBACK_ITEMS = 1024  # labels in one request (413 past it)
FLUSH_WAIT_S = 2.0  # how long feedback waits for records still queued for the writer
LOOK_AGAIN_S = 0.1  # how soon, meanwhile, to look for another worker's writer's (every 0.5 s)
LOOK_AGAIN_MOST_S = 0.4  # the interval grows by half each look up to this (7 looks in 2 s)


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


RunOff = Callable[..., Awaitable[Any]]  # work off the loop: the monitor's bounded pool


async def apply_feedback(
    log: PredictionLog,
    items: Sequence[Feedback],
    class_names: Callable[[str, int], Sequence[str]],
    by: str,
    run: RunOff,
) -> int:
    """Check every item (404 unknown id, 422 bad label), then label the newest record of each
    (id, item) in one transaction, as given ``by`` ADMIN or OPEN; a pair given twice takes its
    last label. The records labelled. Each lookup is a job ``run`` off the loop, and no thread
    is held while it waits for a record answered a moment ago; the database's lock held by
    another writer is a 503, not a 500."""
    last = {(f.id, f.item): f.label for f in items}
    try:
        found = await _find(log, list(last), run)
        labels = []
        for (id, item), label in last.items():
            where = found.get((id, item))
            if where is None:
                raise RecordNotFound(f"no prediction with id {id[:128]!r} and item {item}")
            row, model, version = where
            labels.append((row, class_index(label, class_names(model, version))))
        await run(store.label, log.engine, labels, by)
    except store.RecordsGone:
        raise RecordNotFound("a record was pruned by retention while it was labelled") from None
    except store.AdminLabelled as exc:
        id, item = next(pair for pair, record in found.items() if record[0] in exc.rows)
        raise LabelConflict(
            f"{len(exc.rows)} of the records named (id {id[:128]!r} and item {item} among them) "
            "were labelled otherwise by an admin, whose label an open one does not replace; "
            "nothing was labelled"
        ) from None
    except sa.exc.OperationalError as exc:  # locked past its wait, or gone
        why = f"the prediction log's database is busy; retry shortly ({exc.orig})"
        raise Overloaded(why) from None
    return len(labels)


async def _find(
    log: PredictionLog, pairs: list[tuple[str, int]], run: RunOff
) -> dict[tuple[str, int], Record]:
    """The pairs' newest records, waiting up to FLUSH_WAIT_S for one answered a moment ago: its
    record may still be queued for this process's writer (flushed, if it is: asked before the
    first lookup, so a batch committed in between is found) or another writer's (another
    worker's or replica's, written within its 0.5 s interval: looked for again after 0.1 s, then
    at intervals growing to LOOK_AGAIN_MOST_S, on the loop's clock). Each unknown id
    held a thread 2 s in that wait: ten 35-byte feedbacks held every one feedback and the
    monitor share (the tenth audit). The looks then cost 30 ms of CPU for one unknown id and
    0.37 s for 1,024, each a new lookup of every pair 20 times: now each reads only what was
    committed since the last (``find_newer``), and there are 7."""
    deadline, interval = time.monotonic() + FLUSH_WAIT_S, LOOK_AGAIN_S
    on_its_way = await run(log.queued, {id for id, _ in pairs})
    found: dict[tuple[str, int], Record]
    found, seen = await run(store.find_newer, log.engine, pairs, None)
    if len(found) < len(pairs) and on_its_way:
        await run(log.flush, FLUSH_WAIT_S)
        more, seen = await run(store.find_newer, log.engine, pairs, seen)
        found.update(more)
    while len(found) < len(pairs) and time.monotonic() < deadline:
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, LOOK_AGAIN_MOST_S)
        missing = [pair for pair in pairs if pair not in found]
        more, seen = await run(store.find_newer, log.engine, missing, seen)
        found.update(more)
    return found


def names_or_empty(lookup: Callable[[str, int], Sequence[str]]) -> Callable[[str, int], list[str]]:
    """``lookup``'s class names, or none when the model is gone (every label is then 422)."""

    def names(model: str, version: int) -> list[str]:
        try:
            return list(lookup(model, version))
        except ServingError:
            return []

    return names
