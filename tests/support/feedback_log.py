"""A prediction log with labelled, captured images, written by the service's own store, for the
retrain job's tests (training/feedback.py reads it as the service leaves it)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from service.dataplane import prediction_store


def write_log(path: Path, rows: Sequence[tuple[str, np.ndarray | None, int | None]]) -> Path:
    """A prediction log made by the service's own store: (model, image, label) per record, labelled
    in order (the last label given is the newest)."""
    engine = prediction_store.connect(f"sqlite:///{path}")
    records = [
        {
            "request_id": f"r{i}",
            "item": 0,
            "model": model,
            "version": 1,
            "time": 1000.0 + i,
            "top1": 0,
            "top1_probability": 0.5,
            "image": None if image is None else image.tobytes(),
        }
        for i, (model, image, _) in enumerate(rows)
    ]
    prediction_store.insert(engine, records)
    for i, (_, _, label) in enumerate(rows):
        if label is not None:
            prediction_store.label(engine, [(f"r{i}", 0, label)])
    engine.dispose()
    return path
