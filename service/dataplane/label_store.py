"""Feedback's statements on the prediction log (``prediction_store``'s table): finding the newest
record of a request id's item, cheaply again while another writer may still commit it, and
writing labels, an open labeller's never over an admin's."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.dataplane.prediction_store import ADMIN, PREDICTIONS, Record

FIND_PAIRS = 256  # (id, item) pairs one lookup names (SQLite's bound variables: 2 a pair)
# New records read through the key past the last look, at most: past it, the indexed lookup
SCAN_ROWS = 4096
Pair = tuple[str, int]  # (request id, item)


def find(engine: Engine, pairs: Iterable[Pair], after: int | None = None) -> dict[Pair, Record]:
    """(request id, item) -> (row, model, version) of the newest record of each pair found, of
    those past row ``after`` if given: one indexed lookup a pair, however often a client reused
    its id."""
    table = PREDICTIONS
    wanted = sorted(set(pairs))
    newer = sa.true() if after is None else table.c.row > after
    found: dict[Pair, Record] = {}
    with engine.connect() as connection:
        for start in range(0, len(wanted), FIND_PAIRS):
            chunk = wanted[start : start + FIND_PAIRS]
            newest = (
                sa.select(sa.func.max(table.c.row))
                .where(sa.tuple_(table.c.request_id, table.c.item).in_(chunk) & newer)
                .group_by(table.c.request_id, table.c.item)
            )
            query = sa.select(
                table.c.request_id, table.c.item, table.c.row, table.c.model, table.c.version
            ).where(table.c.row.in_(newest))
            for request_id, item, row, model, version in connection.execute(query):
                found[(request_id, item)] = (row, model, version)
    return found


def find_newer(
    engine: Engine, pairs: Sequence[Pair], seen: int | None
) -> tuple[dict[Pair, Record], int | None]:
    """``find`` over the records committed since the look that returned ``seen`` (None: all of
    them), and what to pass next time. Looking up every pair again each 0.1 s of feedback's wait
    cost 30 ms of CPU for one unknown id, 0.37 s for 1,024; the table's newest row (one seek of
    its key) says whether anything came, and the new rows alone are read.

    On SQLite one writer at a time holds the lock and a new row's key is the largest plus one, so
    the rows past ``seen`` are all that was committed since; a newest row below ``seen`` (a
    prune took the newest) means keys are reused: every record again. Other databases hand keys
    out before their transactions commit, in no order: every pair is looked up each time."""
    if engine.dialect.name != "sqlite":
        return find(engine, pairs), None
    table = PREDICTIONS
    with engine.connect() as connection:  # read before the rows it bounds: none is missed
        newest = int(connection.execute(sa.select(sa.func.max(table.c.row))).scalar() or 0)
        if newest == seen:
            return {}, seen
        if seen is not None and seen < newest <= seen + SCAN_ROWS:
            return _scan(connection, set(pairs), seen, newest), newest
    if seen is None or newest < seen:
        return find(engine, pairs), newest
    return find(engine, pairs, after=seen), newest


def _scan(
    connection: sa.Connection, wanted: set[Pair], seen: int, newest: int
) -> dict[Pair, Record]:
    """The newest record of each pair ``wanted`` among rows (``seen``, ``newest``], read through
    the key: a few new rows cost less than an indexed lookup of each of 1,024 pairs."""
    table, found = PREDICTIONS, dict[Pair, Record]()
    columns = (table.c.request_id, table.c.item, table.c.row, table.c.model, table.c.version)
    new = sa.select(*columns).where((table.c.row > seen) & (table.c.row <= newest))
    for request_id, item, row, model, version in connection.execute(new.order_by(table.c.row)):
        if (request_id, item) in wanted:  # oldest first: the newest record stays
            found[(request_id, item)] = (row, model, version)
    return found


class RecordsGone(Exception):
    """Records found a moment before were pruned before their labels were written."""


class AdminLabelled(Exception):
    """An open label for records an admin labelled otherwise (their rows)."""

    def __init__(self, rows: list[int]) -> None:
        super().__init__(f"{len(rows)} records labelled otherwise by an admin")
        self.rows = rows


def label(engine: Engine, labels: Sequence[tuple[int, int]], by: str) -> None:
    """Set (record's row, class index) labels given ``by`` ADMIN or OPEN in one transaction, all
    or none; a repeat overwrites, its giver too, except that an open label never replaces an
    admin's (``FEEDBACK_OPEN`` let anyone who knew an id turn a trusted label into an untrusted
    one): the same label leaves the admin's as it is, another is ``AdminLabelled``.
    ``RecordsGone`` when a row is no longer there (retention pruned it since it was found)."""
    table = PREDICTIONS
    where = table.c.row == sa.bindparam("at")
    if by != ADMIN:  # decided in the update itself: an admin's label given meanwhile counts
        where = where & sa.or_(table.c.labelled_by.is_(None), table.c.labelled_by != ADMIN)
    statement = (
        table.update()
        .where(where)
        .values(label=sa.bindparam("index"), labelled_at=time.time(), labelled_by=by)
    )
    with engine.begin() as connection:  # rolled back on the way out of a raise
        result = connection.execute(statement, [{"at": row, "index": i} for row, i in labels])
        if result.rowcount != len(labels):
            _left(connection, dict(labels))


def _left(connection: sa.Connection, labels: dict[int, int]) -> None:
    """Why some of ``labels``' rows were not updated: pruned, or an admin's other label."""
    table = PREDICTIONS
    query = sa.select(table.c.row, table.c.label, table.c.labelled_by)
    rows = connection.execute(query.where(table.c.row.in_(labels)))
    present = {row: (index, by) for row, index, by in rows}
    if len(present) != len(labels):
        raise RecordsGone(f"{len(labels) - len(present)} of {len(labels)} pruned")
    taken = [row for row, (index, by) in present.items() if by == ADMIN and index != labels[row]]
    if taken:
        raise AdminLabelled(taken)
