"""A prediction log with labelled, captured images, written by the service's own store, for the
retrain job's tests (training/feedback.py reads it as the service leaves it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from service.dataplane import label_store, prediction_store

# (model, image, label) of one record, and optionally who labelled it (default: an admin)
LogRow = tuple[str, np.ndarray | None, int | None] | tuple[str, np.ndarray | None, int | None, str]


def write_log(path: Path, rows: Sequence[LogRow]) -> Path:
    """A prediction log made by the service's own store: (model, image, label[, labelled by])
    per record, labelled in order (the last label given is the newest)."""
    engine = prediction_store.connect(f"sqlite:///{path}")
    records: list[prediction_store.Row] = [
        (f"r{i}", 0, row[0], 1, 1000.0 + i, 0, 0.5, None if row[1] is None else row[1].tobytes())
        for i, row in enumerate(rows)
    ]  # in prediction_store.COLUMNS' order, as the writer inserts them
    prediction_store.insert(engine, records)
    for i, row in enumerate(rows):
        label = row[2]
        by = row[3] if len(row) == 4 else prediction_store.ADMIN
        if label is not None:
            label_ids(engine, [(f"r{i}", 0, label)], by)
    engine.dispose()
    return path


def label_ids(
    engine: Engine, labels: Sequence[tuple[str, int, int]], by: str = prediction_store.ADMIN
) -> None:
    """(request id, item, class index) labels on each pair's newest record, as feedback does."""
    found = label_store.find(engine, [(id, item) for id, item, _ in labels])
    label_store.label(engine, [(found[(id, item)][0], index) for id, item, index in labels], by)


def make_log_without_provenance(url: str) -> None:
    """The ``predictions`` table as logs made before ``labelled_by`` have it, with one labelled
    record ("old", item 0, class 4): what a service of this version opens on an upgrade."""
    engine = sa.create_engine(url)
    key, blob = (
        ('"row" BIGSERIAL', "BYTEA") if url.startswith("postgresql") else ('"row" INTEGER', "BLOB")
    )
    with engine.begin() as connection:
        connection.exec_driver_sql(
            f"CREATE TABLE predictions ({key} PRIMARY KEY, request_id VARCHAR(128) NOT NULL, "
            "item INTEGER NOT NULL, model VARCHAR(128) NOT NULL, version INTEGER NOT NULL, "
            "time FLOAT NOT NULL, top1 INTEGER NOT NULL, top1_probability FLOAT NOT NULL, "
            f"image {blob}, label INTEGER, labelled_at FLOAT)"
        )
        connection.exec_driver_sql(
            "INSERT INTO predictions (request_id, item, model, version, time, top1, "
            "top1_probability, label, labelled_at) "
            "VALUES ('old', 0, 'tiny', 1, 1.0, 0, 0.5, 4, 2.0)"
        )
    engine.dispose()


def assert_provenance_column_is_added(url: str) -> None:
    """``connect`` adds ``labelled_by`` to an old log: its old label's giver unknown (NULL), a new
    label's recorded; a second open changes nothing."""
    make_log_without_provenance(url)
    for _ in range(2):
        engine = prediction_store.connect(url)
        prediction_store.insert(engine, [("new", 0, "tiny", 1, 3.0, 0, 0.5, None)])
        label_ids(engine, [("new", 0, 2)], prediction_store.OPEN)
        found = {
            r["request_id"]: (r["label"], r["labelled_by"])
            for r in prediction_store.read_all(engine)
        }
        assert found == {"old": (4, None), "new": (2, prediction_store.OPEN)}
        engine.dispose()
