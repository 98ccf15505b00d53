"""A prediction log with labelled, captured images, written by the service's own store, for the
retrain job's tests (training/feedback.py reads it as the service leaves it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sqlalchemy.engine import Engine

from service.dataplane import prediction_store


def write_log(path: Path, rows: Sequence[tuple[str, np.ndarray | None, int | None]]) -> Path:
    """A prediction log made by the service's own store: (model, image, label) per record, labelled
    in order (the last label given is the newest)."""
    engine = prediction_store.connect(f"sqlite:///{path}")
    records: list[prediction_store.Row] = [
        (f"r{i}", 0, model, 1, 1000.0 + i, 0, 0.5, None if image is None else image.tobytes())
        for i, (model, image, _) in enumerate(rows)
    ]  # in prediction_store.COLUMNS' order, as the writer inserts them
    prediction_store.insert(engine, records)
    for i, (_, _, label) in enumerate(rows):
        if label is not None:
            label_ids(engine, [(f"r{i}", 0, label)])
    engine.dispose()
    return path


def label_ids(engine: Engine, labels: Sequence[tuple[str, int, int]]) -> None:
    """(request id, item, class index) labels on each pair's newest record, as feedback does."""
    found = prediction_store.find(engine, [(id, item) for id, item, _ in labels])
    prediction_store.label(engine, [(found[(id, item)][0], index) for id, item, index in labels])
