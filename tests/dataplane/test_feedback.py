"""Feedback against a real SQLite prediction log: the newest record of each (id, item) labelled
with one indexed lookup however often the id was reused, a pair given twice taking its last
label, a database locked by another writer answered 503, and a record another worker writes a
moment later found."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from service.core.errors import LabelConflict, Overloaded, RecordNotFound
from service.dataplane import label_store
from service.dataplane import prediction_store as store
from service.dataplane.feedback import Feedback, apply_feedback
from service.dataplane.prediction_log import PredictionLog

CLASSES = ["cat", "dog", "ship"]


def names(model: str, version: int) -> list[str]:
    return CLASSES


def record(request_id: str, item: int, at: float = 1000.0) -> store.Row:
    return (request_id, item, "tiny", 1, at, 0, 0.5, None)


@pytest.fixture
def log(tmp_path: Path) -> Iterator[PredictionLog]:
    prediction_log = PredictionLog(
        store.database_url(None, tmp_path), CollectorRegistry(), 100, 0.0, (1e9, 10**6)
    )
    yield prediction_log
    prediction_log.close(5.0)


def label_them(log: PredictionLog, items: list[Feedback]) -> int:
    """``apply_feedback`` as the data plane calls it, each lookup on a thread."""

    async def run(work: Any, *args: Any) -> Any:
        return await asyncio.to_thread(work, *args)

    return asyncio.run(apply_feedback(log, items, names, store.ADMIN, run))


def labelled(log: PredictionLog) -> list[tuple[int, str, int, int]]:
    rows = store.read_all(log.engine)
    return [
        (r["row"], r["request_id"], r["item"], r["label"]) for r in rows if r["label"] is not None
    ]


def test_the_newest_record_of_a_reused_id_is_labelled_not_every_one(log: PredictionLog) -> None:
    """One client reused X-Request-ID "x" for 327,680 records, and 1,024 labels on it took 43 s
    under the write lock, labelling every record; an id a counter reuses day after day would
    have had all its earlier records relabelled."""
    store.insert(log.engine, [record("x", i % 3) for i in range(3000)] + [record("y", 0)])
    items = [Feedback("x", "dog", 0), Feedback("x", 2, 1), Feedback("x", "ship", 2)]
    assert label_them(log, items) == 3
    assert labelled(log) == [(2998, "x", 0, 1), (2999, "x", 1, 2), (3000, "x", 2, 2)]


def test_a_pair_given_twice_in_one_body_takes_its_last_label(log: PredictionLog) -> None:
    store.insert(log.engine, [record("a", 0), record("a", 1)])
    items = [Feedback("a", "cat"), Feedback("a", "ship"), Feedback("a", "dog", 1)]
    assert label_them(log, items) == 2
    assert labelled(log) == [(1, "a", 0, 2), (2, "a", 1, 1)]
    with pytest.raises(RecordNotFound):  # checked whole: nothing of this body is labelled
        label_them(log, [Feedback("a", "cat"), Feedback("a", "cat", 7)])
    assert labelled(log) == [(1, "a", 0, 2), (2, "a", 1, 1)]


def test_a_database_locked_by_another_writer_is_a_503_not_a_500(
    log: PredictionLog, tmp_path: Path
) -> None:
    store.insert(log.engine, [record("a", 0)])
    other = sqlite3.connect(tmp_path / "predictions.sqlite3")
    other.execute("BEGIN IMMEDIATE")  # the write lock, held past feedback's 2 s wait
    try:
        with pytest.raises(Overloaded, match="database is busy"):
            label_them(log, [Feedback("a", "cat")])
    finally:
        other.rollback()
        other.close()
    assert label_them(log, [Feedback("a", "cat")]) == 1


def test_a_record_another_worker_writes_a_moment_later_is_found(log: PredictionLog) -> None:
    """With WORKERS=2 the answer may come from the other worker, whose writer writes every 0.5 s:
    flushing this worker's queue found nothing to wait for, and 77 of 200 prompt feedbacks
    were 404s for records written a moment later."""
    other_worker = threading.Timer(0.4, store.insert, (log.engine, [record("late", 0)]))
    other_worker.start()
    start = time.monotonic()
    assert label_them(log, [Feedback("late", "ship")]) == 1
    assert 0.3 < time.monotonic() - start < 2.0
    other_worker.join()


def test_an_unknown_id_holds_no_thread_while_looked_for_and_a_queued_record_is_waited_for(
    log: PredictionLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each unknown id waited 2 s on one of the monitor's two threads: ten 35-byte feedbacks
    held every one, and every label and monitor call was a 503 (the tenth audit's ``h3``).
    The wait is now the loop's; only a record on its way to this process's database is
    flushed for."""
    write = log._write

    def slow_write(batch: list[store.Row]) -> Exception | None:
        time.sleep(0.3)  # the writer busy with a batch
        return write(batch)

    monkeypatch.setattr(log, "_write", slow_write)
    probabilities = np.array([[0.2, 0.5, 0.3]], dtype=np.float32)
    log.record(
        "queued", "tiny", 1, np.zeros((1, 32, 32, 3), np.uint8), {"probabilities": probabilities}
    )
    held: list[float] = []

    async def timed(work: Any, *args: Any) -> Any:
        start = time.monotonic()
        try:
            return await asyncio.to_thread(work, *args)
        finally:
            held.append(time.monotonic() - start)

    start = time.monotonic()
    with pytest.raises(RecordNotFound):
        asyncio.run(apply_feedback(log, [Feedback("never-answered", "cat")], names, "admin", timed))
    assert time.monotonic() - start >= 1.9  # another writer's record was waited for 2 s
    assert len(held) > 5 and max(held) < 0.25  # a thread only for each lookup, none flushed
    assert label_them(log, [Feedback("queued", "dog")]) == 1


def test_a_record_pruned_between_its_lookup_and_its_label_is_a_404_and_labels_nothing(
    log: PredictionLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's retention may delete a record found a moment before: the label's update
    then changed nothing, and feedback answered it labelled."""
    store.insert(log.engine, [record("a", 0), record("b", 0, at=time.time())])
    find = label_store.find

    def pruned_meanwhile(engine: object, pairs: object) -> object:
        found = find(engine, pairs)  # type: ignore[arg-type]
        store.prune(log.engine, 3600, 10**6)  # "a" (at 1000 s) is past the age
        return found

    monkeypatch.setattr(label_store, "find", pruned_meanwhile)
    with pytest.raises(RecordNotFound, match="pruned"):
        label_them(log, [Feedback("b", "cat"), Feedback("a", "dog")])
    assert labelled(log) == []  # "b" neither: all or none


def test_an_unknown_ids_wait_reads_only_what_another_writer_commits_and_still_finds_it(
    log: PredictionLog,
) -> None:
    """The wait looked up every pair again each 0.1 s for 2 s: 0.37 s of CPU for a body of
    1,024 unknown ids. Later looks bind none of the pairs (the rows since the last look are
    read through the key), and records another writer commits within the wait are found."""
    store.insert(log.engine, [record(f"old-{i}", 0) for i in range(5000)])
    wanted = [Feedback(f"late-{i}", "dog") for i in range(1024)]
    bound: list[int] = []

    @sa.event.listens_for(log.engine, "before_cursor_execute")
    def count(_c: Any, _k: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            bound.append(len(parameters))

    def other_writer() -> None:
        for step in range(8):  # unrelated records every 0.1 s, the awaited ones at 0.6 s
            time.sleep(0.1)
            store.insert(log.engine, [record(f"other-{step}-{i}", 0) for i in range(64)])
            if step == 5:
                store.insert(log.engine, [record(f.id, 0) for f in wanted])

    writer = threading.Thread(target=other_writer)
    writer.start()
    assert label_them(log, wanted) == 1024
    writer.join()
    assert max(bound) == 2 * 256  # the first lookup names the pairs, 256 a statement
    assert sum(bound) < 2 * 1024 + 100  # those of one lookup; only a few row bounds after


def test_an_open_label_never_replaces_an_admins(log: PredictionLog) -> None:
    """Under FEEDBACK_OPEN anyone who knew an admin-labelled record's id relabelled it: the last
    label won, and the trusted label became an open one."""
    store.insert(log.engine, [record("a", 0), record("b", 0), record("c", 0)])
    assert label_them(log, [Feedback("a", "cat")]) == 1  # an admin's

    def open_label(items: list[Feedback]) -> int:
        async def run(work: Any, *args: Any) -> Any:
            return await asyncio.to_thread(work, *args)

        return asyncio.run(apply_feedback(log, items, names, store.OPEN, run))

    with pytest.raises(LabelConflict, match="'a' and item 0"):  # the whole body: "b" neither
        open_label([Feedback("b", "dog"), Feedback("a", "ship")])
    assert labelled(log) == [(1, "a", 0, 0)]
    assert open_label([Feedback("a", "cat"), Feedback("b", "dog")]) == 2  # the same: no conflict
    given = {r["request_id"]: (r["label"], r["labelled_by"]) for r in store.read_all(log.engine)}
    assert given == {"a": (0, "admin"), "b": (1, "open"), "c": (None, None)}
    assert label_them(log, [Feedback("a", "ship"), Feedback("b", "ship")]) == 2  # admin: anything
    with pytest.raises(LabelConflict):  # "b" is the admin's now
        open_label([Feedback("b", "dog")])
