"""The prediction log on its own: batches written by the writer thread, top-1 from
probabilities or logits, retention, a dead database never raising, shutdown flushing."""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from service.core.captured_images import unpack
from service.dataplane import prediction_store as store
from service.dataplane.prediction_log import PredictionLog
from service.dataplane.prediction_rows import top1
from service.engine.thread_policy import ThreadScheduling
from tests.support.feedback_log import assert_provenance_column_is_added, label_ids
from tests.support.servers import wait_until

PIXELS = np.zeros((3, 32, 32, 3), dtype=np.uint8)
PROBABILITIES = np.array([[0.1, 0.9], [0.6, 0.4], [0.5, 0.5]], dtype=np.float32)


def make_log(url: str, capacity: int = 1000, capture: float = 0.0) -> PredictionLog:
    return PredictionLog(url, CollectorRegistry(), capacity, capture, (3600.0, 1000))


def dropped(log: PredictionLog, reason: str) -> float:
    return float(log.dropped.labels(reason)._value.get())


def test_top1_from_probabilities_or_the_softmax_of_logits() -> None:
    classes, probabilities = top1({"probabilities": PROBABILITIES})  # type: ignore[misc]
    assert classes.tolist() == [1, 0, 0]
    assert probabilities.tolist() == pytest.approx([0.9, 0.6, 0.5])
    logits = np.log(PROBABILITIES)
    classes, probabilities = top1({"logits": logits})  # type: ignore[misc]
    assert classes.tolist() == [1, 0, 0]
    assert probabilities.tolist() == pytest.approx([0.9, 0.6, 0.5], abs=1e-6)
    assert top1({"something_else": PROBABILITIES}) is None


def test_records_are_written_in_batches_and_images_only_when_captured(tmp_path: Path) -> None:
    url = store.database_url(None, tmp_path)
    log = make_log(url)
    log.record("a", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    assert log.flush(5.0)
    rows = store.read_all(log.engine)
    assert [(r["request_id"], r["item"], r["top1"]) for r in rows] == [
        ("a", 0, 1),
        ("a", 1, 0),
        ("a", 2, 0),
    ]
    assert all(r["image"] is None and r["label"] is None for r in rows)
    log.close(5.0)
    captured = make_log(url, capture=1.0)
    captured.record("b", "tiny", 2, PIXELS + 7, {"probabilities": PROBABILITIES})
    captured.close(5.0)
    images = [r["image"] for r in store.read_all(store.connect(url)) if r["request_id"] == "b"]
    assert [unpack(image, 3072) for image in images] == [bytes([7]) * 3072] * 3
    # compressed: one client's one-pixel PNGs made 3,072 bytes a row (the log grew x40)
    assert all(len(image) < 100 for image in images)


def test_a_run_is_queued_once_and_written_as_each_requests_own_rows(tmp_path: Path) -> None:
    """``record_run``: one entry for a batched run (what the model's thread hands over), one row
    per image of each tagged request under its own id, item and top-1; captured per request."""
    url = store.database_url(None, tmp_path)
    log = make_log(url, capture=1.0)
    log.close(5.0)  # this thread drains, so the queue can be looked at first
    run = {"probabilities": np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])}
    pixels = np.arange(4, dtype=np.uint8)[:, None, None, None] + PIXELS[:1]
    log.record_run("tiny", 1, [("x", 0, 1), ("y", 2, 4)], run, pixels)  # row 1: untagged
    log.record("z", "tiny", 1, PIXELS[:1], {"probabilities": PROBABILITIES[2:]})
    assert len(log._pending) == 2
    log._drain()
    rows = store.read_all(log.engine)
    firsts = [(unpack(r["image"], 3072) or b"?")[0] for r in rows]  # each image's first pixel
    found = [
        (r["request_id"], r["item"], r["top1"], first)
        for r, first in zip(rows, firsts, strict=True)
    ]
    assert found == [("x", 0, 1, 0), ("y", 0, 1, 2), ("y", 1, 0, 3), ("z", 0, 0, 0)]
    assert [round(r["top1_probability"], 3) for r in rows] == [0.9, 0.7, 0.6, 0.5]


@pytest.mark.parametrize(
    ("scheduling", "policy"), [("batch", os.SCHED_BATCH), ("normal", os.SCHED_OTHER)]
)
def test_the_writer_thread_is_scheduled_as_configured(
    tmp_path: Path, scheduling: ThreadScheduling, policy: int
) -> None:
    url = store.database_url(None, tmp_path)
    log = PredictionLog(url, CollectorRegistry(), 10, 0, (60, 4), scheduling=scheduling)
    seen: list[int] = []
    log.on_written = lambda _: seen.append(os.sched_getscheduler(0))  # on the writer thread
    log.record("r", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    assert log.flush(5.0)
    assert seen == [policy]
    log.close(5.0)


def test_retention_drops_the_oldest_rows_past_the_cap(tmp_path: Path) -> None:
    log = PredictionLog(store.database_url(None, tmp_path), CollectorRegistry(), 100, 0, (60, 4))
    for i in range(3):
        log.record(f"r{i}", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    assert log.flush(5.0)
    assert log.prune() == 5  # 9 rows, the cap is 4
    assert [r["request_id"] for r in store.read_all(log.engine)] == ["r1", "r2", "r2", "r2"]
    log.close(5.0)


def test_a_read_only_database_drops_records_without_raising(tmp_path: Path) -> None:
    """SQLite opened read-only (as a full or read-only data folder leaves it; chmod would not
    stop root, who runs CI): every write fails, is counted, and nothing waits for it."""
    path = tmp_path / "log.sqlite3"
    sqlite3.connect(path).close()  # the file exists, empty
    log = make_log(f"sqlite:///file:{path}?mode=ro&uri=true")
    start = time.perf_counter()
    for i in range(50):
        log.record(str(i), "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    assert time.perf_counter() - start < 0.5  # the request path never waits for the database
    log.flush(10.0)
    assert dropped(log, "write_failed") == 150
    log.close(5.0)


def test_a_file_uri_opens_its_file_and_makes_no_folder_named_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``file:...?uri=true`` is SQLite's URI form: read as a path it was a folder "file:" made
    in the working directory."""
    path = tmp_path / "db" / "log.sqlite3"
    store.connect(f"sqlite:///{path}").dispose()  # the tables exist
    monkeypatch.chdir(tmp_path)
    engine = store.connect(f"sqlite:///file:{path}?mode=ro&uri=true")
    try:
        assert store.read_all(engine) == []
    finally:
        engine.dispose()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db"]


def test_a_full_queue_drops_and_counts_instead_of_blocking(tmp_path: Path) -> None:
    # a database that cannot be opened: its folder's name is taken by a file
    (tmp_path / "taken").write_text("")
    log = make_log(f"sqlite:///{tmp_path}/taken/log.sqlite3", capacity=2)
    for i in range(20):
        log.record(str(i), "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    log.flush(10.0)
    assert dropped(log, "queue_full") + dropped(log, "write_failed") == 60
    assert dropped(log, "queue_full") > 0
    log.close(5.0)


def test_close_writes_what_is_still_queued(tmp_path: Path) -> None:
    url = store.database_url(None, tmp_path)
    log = make_log(url, capacity=100_000)
    for i in range(2000):
        log.record(str(i), "tiny", 1, PIXELS[:1], {"probabilities": PROBABILITIES[:1]})
    log.close(10.0)
    assert len(store.read_all(store.connect(url))) == 2000


def test_a_locked_database_drops_and_counts_and_writing_resumes_when_it_is_free(
    tmp_path: Path,
) -> None:
    url = store.database_url(None, tmp_path)
    store.connect(url).dispose()  # the tables exist
    holder = sqlite3.connect(tmp_path / "predictions.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the lock: ours waits 2 s, then fails
    log = make_log(url)
    start = time.perf_counter()
    log.record("locked", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    assert time.perf_counter() - start < 0.1
    log.flush(10.0)
    assert dropped(log, "write_failed") == 3
    holder.execute("ROLLBACK")
    holder.close()
    log.record("free", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    log.close(10.0)
    assert {r["request_id"] for r in store.read_all(store.connect(url))} == {"free"}


def test_a_failed_batch_is_retried_and_lands_when_the_database_is_free(tmp_path: Path) -> None:
    url = store.database_url(None, tmp_path)
    store.connect(url).dispose()
    holder = sqlite3.connect(tmp_path / "predictions.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # locked: each try waits 2 s, then fails
    log = PredictionLog(url, CollectorRegistry(), 1000, 0.0, (3600.0, 1000), retry_s=60.0)
    log.record("held", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    log.flush(0.1)  # wakes the writer
    wait_until(lambda: log.write_errors._value.get() >= 1, 10, "a failed write")
    log.record("queued", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    holder.execute("ROLLBACK")
    holder.close()
    assert log.flush(10.0)
    assert dropped(log, "write_failed") == 0
    rows = store.read_all(log.engine)
    assert [r["request_id"] for r in rows] == ["held"] * 3 + ["queued"] * 3  # in order
    log.close(5.0)


def test_the_retry_is_bounded_in_time_then_the_batch_is_dropped_and_counted(
    tmp_path: Path,
) -> None:
    path = tmp_path / "log.sqlite3"
    sqlite3.connect(path).close()
    url = f"sqlite:///file:{path}?mode=ro&uri=true"  # every write fails, retryably
    log = PredictionLog(url, CollectorRegistry(), 1000, 0.0, (3600.0, 1000), retry_s=0.2)
    log.record("a", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    assert log.flush(10.0)  # held, retried, then given up within the window
    assert dropped(log, "write_failed") == 3
    assert log.write_errors._value.get() >= 2  # the first try and at least one retry
    log.close(5.0)


def test_one_batch_mixes_models_and_outputs_and_a_bad_answer_never_stops_the_writer(
    tmp_path: Path,
) -> None:
    url = store.database_url(None, tmp_path)
    log = make_log(url)
    log.record("p", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    wide = np.eye(4, dtype=np.float32)[[3]] * 5  # logits of a 4-class model: top class 3
    log.record("l", "wide", 2, PIXELS[:1], {"logits": wide})
    log.record("bad", "none", 1, PIXELS[:1], {"probabilities": np.zeros((1, 0), np.float32)})
    assert log.flush(5.0)
    log.record("after", "tiny", 1, PIXELS[:1], {"probabilities": PROBABILITIES[:1]})
    assert log.flush(5.0)
    found = {
        (r["request_id"], r["item"]): (r["model"], r["top1"]) for r in store.read_all(log.engine)
    }
    assert found == {("p", 0): ("tiny", 1), ("p", 1): ("tiny", 0), ("p", 2): ("tiny", 0),
                     ("l", 0): ("wide", 3), ("after", 0): ("tiny", 1)}  # fmt: skip
    log.close(5.0)


def test_sqlite_insert_keeps_every_value_exactly_whatever_the_id_holds(tmp_path: Path) -> None:
    """SQLite takes a batch as multi-row ``VALUES`` statements: ids with quotes, backslashes,
    control characters and non-ASCII text, every float, and captured images beside rows without
    one, come back as given."""
    engine = store.connect(store.database_url(None, tmp_path))
    ids = ['a"b', "c'd", "e\\f", "g\nh\t", "ünï 😀", "x" * 128, "", "[1, 2]"]
    rng = np.random.default_rng(3)
    rows: list[store.Row] = [
        (
            request_id,
            i,
            f"model-{i % 2}",
            i + 1,
            1.7e9 + float(rng.random()),
            i,
            float(rng.random()),
            bytes([i]) * 3 if i % 3 == 0 else None,
        )
        for i, request_id in enumerate(ids)
    ]
    store.insert(engine, rows)
    found = sorted(
        (tuple(r[c] for c in store.COLUMNS) for r in store.read_all(engine)),
        key=lambda row: row[1],
    )
    assert found == rows
    kinds = [str, int, str, int, float, int, float, type(None)]
    assert [type(value) for value in found[1]] == kinds


def test_sqlite_splits_a_batch_past_its_variable_limit_and_keeps_the_order(
    tmp_path: Path,
) -> None:
    """An SQLite built with a small variable limit (999 before 3.32) gets several statements in
    one transaction: 7 rows at 2 per statement all land, in order."""
    engine = store.connect(store.database_url(None, tmp_path))
    with engine.connect() as connection:  # the pool hands this connection back to the insert
        driver: sqlite3.Connection = connection.connection.driver_connection  # type: ignore[assignment]
        driver.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 2 * len(store.COLUMNS) + 1)
    rows: list[store.Row] = [(f"id{i}", 0, "m", 1, 1.7e9 + i, i, 0.5, None) for i in range(7)]
    store.insert(engine, rows)
    assert [r["request_id"] for r in store.read_all(engine)] == [f"id{i}" for i in range(7)]
    with engine.connect() as connection:
        driver = connection.connection.driver_connection  # type: ignore[assignment]
        assert driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) == 17  # the same connection


def test_the_queue_is_bounded_in_bytes_as_well_as_in_runs(tmp_path: Path) -> None:
    """A run's outputs and captured images count against ``max_bytes``: 65,536 queued runs of
    1,024 captured images each could otherwise hold 200 GiB while the database is slow."""
    url = store.database_url(None, tmp_path)
    log = PredictionLog(url, CollectorRegistry(), 1000, 1.0, (3600.0, 1000), max_bytes=5_000)
    log.record("over", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})  # 9,216 + 24 bytes
    assert dropped(log, "queue_full") == 3
    log.record("fits", "tiny", 1, PIXELS[:1], {"probabilities": PROBABILITIES[:1]})
    assert log.flush(10.0)
    assert [row["request_id"] for row in store.read_all(log.engine)] == ["fits"]
    log.record("fits again", "tiny", 1, PIXELS[:1], {"probabilities": PROBABILITIES[:1]})
    assert log.flush(10.0) and dropped(log, "queue_full") == 3  # written bytes were given back
    log.close(5.0)


def test_the_file_is_kept_within_its_bytes_by_dropping_the_oldest_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows are what a client controls (a 128-character request id, captured images): a bound
    in rows alone let the file grow with them."""
    monkeypatch.setattr(PredictionLog, "_size_due", lambda self: False)  # pruned here, below
    limit = 256 * 1024
    log = PredictionLog(
        store.database_url(None, tmp_path), CollectorRegistry(), 1000, 1.0, (3600, 10**6),
        max_stored_bytes=limit,
    )  # fmt: skip
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for i in range(60):  # 180 rows of incompressible pixels and long ids: about 700 kB
        log.record(f"{i:04d}" + "x" * 124, "tiny", 1, noise, {"probabilities": PROBABILITIES})
    assert log.flush(5.0)
    assert store.stored_bytes(log.engine) > limit  # type: ignore[operator]
    dropped = log.prune()
    assert dropped > 0
    assert store.stored_bytes(log.engine) <= limit  # type: ignore[operator]
    kept = [r["request_id"][:4] for r in store.read_all(log.engine)]
    assert len(kept) == 180 - dropped
    assert kept[-1] == "0059" and kept[0] > "0000"  # the oldest went, the newest stayed
    assert log.pruned.labels("bytes")._value.get() == dropped
    log.close(5.0)


def test_the_writer_checks_the_bytes_on_its_own_and_no_bound_drops_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("service.dataplane.prediction_log.SIZE_CHECK_INTERVAL_S", 0.0)
    bounded = PredictionLog(
        store.database_url(None, tmp_path / "a"), CollectorRegistry(), 1000, 1.0, (3600, 10**6),
        max_stored_bytes=128 * 1024,
    )  # fmt: skip
    unbounded = make_log(store.database_url(None, tmp_path / "b"), capture=1.0)
    noise = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for i in range(40):
        for log in (bounded, unbounded):
            log.record(f"r{i}", "tiny", 1, noise, {"probabilities": PROBABILITIES})
    within = lambda: (store.stored_bytes(bounded.engine) or 0) <= 128 * 1024  # noqa: E731
    assert bounded.flush(5.0)
    wait_until(within, 10.0, "the bounded log within its bytes")
    assert bounded.pruned.labels("bytes")._value.get() > 0
    assert unbounded.flush(5.0) and unbounded.prune() == 0
    assert len(store.read_all(unbounded.engine)) == 120
    for log in (bounded, unbounded):
        log.close(5.0)


def test_a_writer_kept_busy_by_a_flood_still_keeps_the_file_within_its_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While answers came faster than the writer wrote them it never left its drain, and
    retention never ran: 40 s of captured images grew a 50 MB bound to 1.9 GB (the tenth
    audit's ``h1_disk_bound.py``)."""
    monkeypatch.setattr("service.dataplane.prediction_log.SIZE_CHECK_INTERVAL_S", 0.0)
    monkeypatch.setattr("service.dataplane.prediction_log.DRAIN_PASS_S", 0.05, raising=False)
    insert = store.insert

    def slow_insert(engine: sa.Engine, rows: list[store.Row]) -> None:
        time.sleep(0.02)  # a disk slower than the answers coming in
        insert(engine, rows)

    monkeypatch.setattr(store, "insert", slow_insert)
    log = PredictionLog(
        store.database_url(None, tmp_path), CollectorRegistry(), 1000, 1.0, (3600, 10**6),
        max_stored_bytes=128 * 1024,
    )  # fmt: skip
    noise = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    pruned, deadline = 0.0, time.monotonic() + 5
    while not pruned and time.monotonic() < deadline:
        log.record("flood", "tiny", 1, noise, {"probabilities": PROBABILITIES})
        assert log._pending  # the writer never runs out of work
        time.sleep(0.0002)  # and gets its turns at the interpreter
        pruned = log.pruned.labels("bytes")._value.get()
    assert pruned > 0, "no retention while the writer was kept busy"
    log.close(5.0)


def test_the_writer_checks_the_bytes_after_an_eighth_of_the_bound_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not only every ``SIZE_CHECK_INTERVAL_S``: at 40 MB/s of captured images the file grew
    200 MB past a 50 MB bound between two checks."""
    monkeypatch.setattr("service.dataplane.prediction_log.SIZE_CHECK_INTERVAL_S", 3600.0)
    log = PredictionLog(
        store.database_url(None, tmp_path), CollectorRegistry(), 1000, 1.0, (3600, 10**6),
        max_stored_bytes=128 * 1024,
    )  # fmt: skip
    noise = np.random.default_rng(4).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for i in range(60):  # about 550 kB of pixels
        log.record(f"r{i}", "tiny", 1, noise, {"probabilities": PROBABILITIES})
    assert log.flush(5.0)
    wait_until(lambda: log.pruned.labels("bytes")._value.get() > 0, 5.0, "a prune by bytes")
    assert (store.stored_bytes(log.engine) or 0) <= 2 * 128 * 1024
    log.close(5.0)


def test_a_prune_leaves_no_large_wal_behind(tmp_path: Path) -> None:
    """The pages a prune frees go through SQLite's WAL, which kept its largest size while the
    server ran: 211 MB beside a 50 MB bound after a flood of captured images (the tenth
    audit)."""
    log = PredictionLog(
        store.database_url(None, tmp_path), CollectorRegistry(), 10_000, 1.0, (3600, 10**6),
        max_stored_bytes=64 * 1024,
    )  # fmt: skip
    noise = np.random.default_rng(3).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    for i in range(2000):  # 6,000 rows, 18 MB of incompressible pixels
        log.record(f"r{i}", "tiny", 1, noise, {"probabilities": PROBABILITIES})
    assert log.flush(30.0)
    log.prune()  # and the writer's own as it wrote
    assert log.pruned.labels("bytes")._value.get() > 5000
    log.record("next", "tiny", 1, noise[:1], {"probabilities": PROBABILITIES[:1]})
    assert log.flush(5.0)  # a write after the prune's checkpoint starts the WAL afresh, cut
    wal = tmp_path / "predictions.sqlite3-wal"
    assert wal.stat().st_size <= store.WAL_KEPT_BYTES + 1024 * 1024, wal.stat().st_size
    with log.engine.connect() as connection:  # else the WAL keeps its largest size for good
        limit = connection.exec_driver_sql("PRAGMA journal_size_limit").scalar_one()
    assert limit == store.WAL_KEPT_BYTES
    log.close(5.0)


def test_pruning_drops_unlabelled_rows_before_labelled_ones(tmp_path: Path) -> None:
    """Labels are what the retrain learns from; a flood of cheap requests past the cap pushed
    every labelled row out, oldest first, within minutes."""
    log = PredictionLog(store.database_url(None, tmp_path), CollectorRegistry(), 100, 0, (60, 5))
    for i in range(4):
        log.record(f"r{i}", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    assert log.flush(5.0)
    label_ids(log.engine, [("r0", 0, 1), ("r0", 2, 0), ("r1", 1, 1)])
    assert log.prune() == 7  # 12 rows, the cap is 5: the 7 oldest unlabelled go
    kept = [(r["request_id"], r["item"]) for r in store.read_all(log.engine)]
    assert kept == [("r0", 0), ("r0", 2), ("r1", 1), ("r3", 1), ("r3", 2)]
    label_ids(log.engine, [("r3", 1, 0), ("r3", 2, 0)])
    log.max_rows = 2  # labelled rows alone past the cap: the oldest of them go
    assert log.prune() == 3
    kept = [(r["request_id"], r["item"]) for r in store.read_all(log.engine)]
    assert kept == [("r3", 1), ("r3", 2)]
    log.close(5.0)


def test_pruning_deletes_in_short_transactions_by_age_then_past_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A single delete of 550,000 rows held SQLite's write lock 3.9 s, past the 2 s a feedback
    call waits for it: pruning now deletes ``DELETE_ROWS`` a transaction."""
    monkeypatch.setattr(store, "DELETE_ROWS", 2)
    engine = store.connect(store.database_url(None, tmp_path))
    now = time.time()
    ages = [7200, 5000, 7000, 10, 9, 8, 7, 6, 5]  # seconds; the first three past an hour
    store.insert(
        engine, [(f"r{i}", 0, "tiny", 1, now - a, 1, 0.5, None) for i, a in enumerate(ages)]
    )
    label_ids(engine, [("r4", 0, 3)])
    transactions: list[int] = []
    sa.event.listen(engine, "commit", lambda _connection: transactions.append(1))
    assert store.prune(engine, 3600, 3) == 6  # 3 by age, then 3 unlabelled past the cap
    assert [r["request_id"] for r in store.read_all(engine)] == ["r4", "r7", "r8"]
    assert len(transactions) >= 4  # 2 rows a transaction at most


def test_two_workers_pruning_from_the_same_count_cut_at_the_same_row(tmp_path: Path) -> None:
    """With WORKERS > 1 every worker's writer prunes: two that counted the table before either
    deleted must not each drop the excess (10 rows past a cap of 6 kept only the 2 labelled
    ones)."""
    engine = store.connect(store.database_url(None, tmp_path))
    store.insert(engine, [(f"r{i}", 0, "tiny", 1, time.time(), 1, 0.5, None) for i in range(10)])
    label_ids(engine, [("r2", 0, 3), ("r5", 0, 1)])
    total = len(store.read_all(engine))
    assert store._keep_newest(engine, 6, total) == 4  # the 4 oldest unlabelled
    assert store._keep_newest(engine, 6, total) == 0  # the same count, seen a moment earlier
    kept = [r["request_id"] for r in store.read_all(engine)]
    assert kept == ["r2", "r5", "r6", "r7", "r8", "r9"]
    store.insert(engine, [("r10", 0, "tiny", 1, time.time(), 1, 0.5, None)])
    assert store._keep_newest(engine, 6, 7) == 1 and store._keep_newest(engine, 6, 7) == 0
    assert [r["request_id"] for r in store.read_all(engine)] == [
        "r2",
        "r5",
        "r7",
        "r8",
        "r9",
        "r10",
    ]


def test_a_data_dir_that_cannot_be_made_is_a_database_that_cannot_be_opened(
    tmp_path: Path,
) -> None:
    """Retried by the writer and a 503 to feedback and the monitor, as a database that is down:
    the folder's ``NotADirectoryError`` was a 500 (the tenth audit's ``h4b``)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(sa.exc.OperationalError, match="Not a directory"):
        store.connect(store.database_url(None, blocker / "data"))


def test_a_log_made_before_provenance_gets_its_column_on_open(tmp_path: Path) -> None:
    """``create_all`` leaves an existing table as it is: labelling an upgraded log failed."""
    assert_provenance_column_is_added(f"sqlite:///{tmp_path / 'old.sqlite3'}")


def test_a_checkpoint_does_not_wait_for_a_reader_and_a_tiny_bound_still_writes(
    tmp_path: Path,
) -> None:
    """A TRUNCATE checkpoint took the write lock and waited 2 s for a reader (a retrain
    streaming the log), labels behind it; a bound under 8 bytes made the writer spin, writing
    nothing (both found by the review)."""
    log = PredictionLog(
        store.database_url(None, tmp_path), CollectorRegistry(), 100, 0.0, (3600, 10**6),
        max_stored_bytes=1,
    )  # fmt: skip
    log.record("a", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
    assert log.flush(5.0) and log.written._value.get() == 3
    reader = sqlite3.connect(tmp_path / "predictions.sqlite3", isolation_level=None)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM predictions").fetchone()  # a snapshot held
    try:
        start = time.monotonic()
        log.record("b", "tiny", 1, PIXELS, {"probabilities": PROBABILITIES})
        assert log.flush(5.0)  # frames past the reader's snapshot, a prune, its checkpoint
        store.checkpoint(log.engine)
        assert time.monotonic() - start < 1.0
    finally:
        reader.close()
    log.close(5.0)
