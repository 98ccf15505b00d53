"""Labelled, captured images from the service's prediction log, for the retrain job.

    python -m training retrain --recipe lecture --feedback data/service/predictions.sqlite3

The log's ``predictions`` table (its columns are documented in docs/monitoring.md; they are the
contract) is read with SQLAlchemy Core text queries, not through the service's own code, which
the training package may not import. Images are de-duplicated by the SHA-256 of their pixels (a
relabelled image takes its last label), capped per class (the newest kept), and a fixed share,
chosen by that hash, is held out to judge the candidate: an image falls on the same side in
every run. Memory stays bounded: the first pass keeps only hashes, the second only the images
kept.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from service.core.captured_images import unpack
from service.core.errors import DataError
from training.data import CLASS_NAMES, IMAGE_SHAPE, Split

if TYPE_CHECKING:  # imported where used: `python -m training` starts without it
    import sqlalchemy as sa

IMAGE_BYTES = int(np.prod(IMAGE_SHAPE))  # 3,072: 32x32x3 uint8 (compressed in the log)
DEFAULT_HOLDOUT_SHARE = 0.2
DEFAULT_CAP_PER_CLASS = 2000  # under half of a class's 4,500-5,000 CIFAR training images
HASH_SPACE = 16**16  # the first 16 hex digits of the hash, as a number, decide the side

# Labelled rows with a captured image for one model, in the order their labels were given, so
# a later label for the same pixels replaces an earlier one. "row" is quoted: a keyword in
# PostgreSQL.
LABELLED = (
    "SELECT image, label FROM predictions WHERE model = :model AND label IS NOT NULL "
    'AND image IS NOT NULL ORDER BY labelled_at, "row"'
)


@dataclass(frozen=True)
class Feedback:
    """Feedback images for training and held out for the quality gate, and how they were made."""

    train: Split
    holdout: Split
    summary: dict[str, Any] = field(default_factory=dict)  # for the card and the job's log


def database_url(source: str) -> str:
    """A SQLAlchemy URL as given, or a SQLite file path opened read-only (never created)."""
    if "://" in source:
        return source
    path = Path(source)
    if not path.is_file():
        raise DataError(
            f"{source}: no such prediction log (give a SQLite file or a SQLAlchemy URL, e.g. "
            "postgresql+psycopg://user@host/db)"
        )
    return f"sqlite:///file:{path.resolve()}?mode=ro&uri=true"


def is_held_out(digest: str, share: float) -> bool:
    """Whether the image with this SHA-256 (hex) is held out: fixed by its pixels alone."""
    return int(digest[:16], 16) / HASH_SPACE < share


def choose(
    labels: dict[str, int], cap_per_class: int, holdout_share: float
) -> tuple[dict[str, int], dict[str, int], int]:
    """Split ``labels`` (hash -> label, oldest label first) into (train, held out, dropped by the
    cap): per class the newest ``cap_per_class`` are kept."""
    kept: dict[str, int] = {}
    per_class = [0] * len(CLASS_NAMES)
    for digest, label in reversed(labels.items()):  # newest first
        if per_class[label] < cap_per_class:
            per_class[label] += 1
            kept[digest] = label
    train = {d: y for d, y in kept.items() if not is_held_out(d, holdout_share)}
    holdout = {d: y for d, y in kept.items() if is_held_out(d, holdout_share)}
    return train, holdout, len(labels) - len(kept)


def _usable(image: Any, label: Any) -> bool:
    return (
        isinstance(image, bytes | memoryview)
        and len(image) == IMAGE_BYTES
        and isinstance(label, int)
        and 0 <= label < len(CLASS_NAMES)
    )


def _rows(engine: sa.Engine, model: str) -> Iterator[tuple[bytes | None, int]]:
    """Every labelled, captured row of ``model``, streamed (the log may hold a million), its
    image as pixels (``captured_images.unpack``: None where it holds none)."""
    import sqlalchemy as sa

    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=1000).execute(
            sa.text(LABELLED), {"model": model}
        )
        for image, label in result:
            stored = bytes(image) if isinstance(image, memoryview) else image
            yield (unpack(stored, IMAGE_BYTES) if isinstance(stored, bytes) else stored), label


def _last_labels(engine: sa.Engine, model: str) -> tuple[dict[str, int], int, int]:
    """First pass: hash -> last label, oldest first; and the rows read and the unusable ones."""
    labels: dict[str, int] = {}
    rows = unusable = 0
    for image, label in _rows(engine, model):
        rows += 1
        if image is None or not _usable(image, label):
            unusable += 1
            continue
        digest = hashlib.sha256(image).hexdigest()
        labels.pop(digest, None)  # re-inserted: a relabel moves it to the newest end
        labels[digest] = label
    return labels, rows, unusable


def _collect(
    engine: sa.Engine, model: str, train: dict[str, int], holdout: dict[str, int]
) -> tuple[Split, Split]:
    """Second pass: the pixels of the chosen hashes, with their (last) labels, on their sides."""
    order = sorted({**train, **holdout})
    place = {digest: i for i, digest in enumerate(order)}
    images = np.empty((len(order), *IMAGE_SHAPE), dtype=np.uint8)
    found = np.zeros(len(order), dtype=bool)
    for image, label in _rows(engine, model):
        if image is None or not _usable(image, label):
            continue
        i = place.get(hashlib.sha256(image).hexdigest())
        if i is not None and not found[i]:
            images[i] = np.frombuffer(image, dtype=np.uint8).reshape(IMAGE_SHAPE)
            found[i] = True
    labels = np.array([train.get(d, holdout.get(d, 0)) for d in order], dtype=np.int64)
    held = np.array([d in holdout for d in order], dtype=bool)
    # ``found``: the service may prune rows between the passes
    return (
        Split(images[found & ~held], labels[found & ~held]),
        Split(images[found & held], labels[found & held]),
    )


def read_feedback(
    source: str,
    model: str,
    *,
    cap_per_class: int = DEFAULT_CAP_PER_CLASS,
    holdout_share: float = DEFAULT_HOLDOUT_SHARE,
) -> Feedback:
    """The labelled, captured images of ``model`` in the log at ``source`` (file or URL)."""
    if not 0 <= holdout_share < 1 or cap_per_class < 0:
        raise DataError("the held-out share must be in [0, 1) and the cap at least 0")
    import sqlalchemy as sa

    url = database_url(source)
    try:
        shown = sa.engine.make_url(url).render_as_string(hide_password=True)
    except sa.exc.ArgumentError:
        raise DataError(f"{source}: not a SQLAlchemy database URL") from None
    shown = shown if "://" in source else source
    try:
        engine = sa.create_engine(url)
        try:
            labels, rows, unusable = _last_labels(engine, model)
            train_hashes, holdout_hashes, capped = choose(labels, cap_per_class, holdout_share)
            train, holdout = _collect(engine, model, train_hashes, holdout_hashes)
        finally:
            engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        reason = str(exc.orig) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
        raise DataError(f"{shown}: cannot read the prediction log's table ({reason})") from None
    summary = {
        "source": shown,
        "model": model,
        "rows": rows,
        "unusable": unusable,
        "unique_images": len(labels),
        "dropped_by_cap": capped,
        "cap_per_class": cap_per_class,
        "holdout_share": holdout_share,
        "train": len(train),
        "holdout": len(holdout),
        "train_per_class": np.bincount(train.labels, minlength=len(CLASS_NAMES)).tolist(),
    }
    return Feedback(train, holdout, summary)
