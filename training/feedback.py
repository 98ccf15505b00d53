"""Labelled, captured images from the service's prediction log, for the retrain job.

    python -m training retrain --recipe lecture --feedback data/service/predictions.sqlite3

The log's ``predictions`` table (its columns are documented in docs/monitoring.md; they are the
contract) is read with SQLAlchemy Core text queries, not through the service's own code, which
the training package may not import. Only labels an admin gave are taken unless
``open_labels`` (``--feedback-open-labels``) admits those of anyone (``FEEDBACK_OPEN``) and of
unknown origin (logs from before ``labelled_by``). Images are de-duplicated by the SHA-256 of
their pixels (a relabelled image takes its last label; an admin's beats anyone else's), capped
per class (``choose``), and a share, chosen by a keyed hash (``holdout_key``), is held out to
judge the candidate: an image falls on the same side in every run, and no client can pick it.
Memory stays bounded: the first pass keeps only hashes, the second only the images kept.
"""

from __future__ import annotations

import hashlib
import hmac
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
HASH_SPACE = 2**64  # the first 8 bytes of a keyed hash, as a number, decide
ADMIN = "admin"  # ``labelled_by`` of an admin's label (service/dataplane/prediction_store.py)

# Labelled rows with a captured image for one model, in the order their labels were given, so
# a later label for the same pixels replaces an earlier one. "row" is quoted: a keyword in
# PostgreSQL. ``{by}``: the column, or NULL in a log made before it (no label's giver known).
LABELLED = (
    "SELECT image, label, {by} FROM predictions WHERE model = :model AND label IS NOT NULL "
    'AND image IS NOT NULL ORDER BY labelled_at, "row"'
)


@dataclass(frozen=True)
class Feedback:
    """Feedback images for training and held out for the quality gate, and how they were made."""

    train: Split
    holdout: Split
    summary: dict[str, Any] = field(default_factory=dict)  # for the card and the job's log

    def whose(self) -> str:
        """One line of the job's log: whose labels were trained on, and what was left out."""
        others = self.summary.get("not_admin_labels", 0)
        if self.summary.get("open_labels"):
            return (
                f"Feedback labels: admins' and, with --feedback-open-labels, {others} rows "
                "labelled by others (FEEDBACK_OPEN, or of unknown origin): whoever labelled "
                "them decides part of what the model learns"
            )
        return (
            f"Feedback labels: admins' only; {others} rows labelled by others (FEEDBACK_OPEN, or "
            "before the log recorded who) left out (--feedback-open-labels would use them)"
        )


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


def keyed_fraction(digest: str, key: bytes, purpose: bytes) -> float:
    """A number in [0, 1) fixed by the pixels' SHA-256 (hex) and ``key``, unknowable without
    the key; ``purpose`` keeps the hold-out's and the cap's draws independent."""
    mac = hmac.new(key, purpose + bytes.fromhex(digest), hashlib.sha256).digest()
    return int.from_bytes(mac[:8], "big") / HASH_SPACE


def is_held_out(digest: str, share: float, key: bytes) -> bool:
    """Whether the image with this SHA-256 (hex) is held out: fixed by its pixels and the key,
    so the same in every run that has the key, and not steerable by whoever chose the pixels."""
    return keyed_fraction(digest, key, b"holdout") < share


def choose(
    labels: dict[str, tuple[int, bool]], cap_per_class: int, holdout_share: float, key: bytes
) -> tuple[dict[str, int], dict[str, int], int]:
    """Split ``labels`` (hash -> (label, given by an admin)) into (train, held out, dropped by
    the cap). Per class, admins' labels are kept first, then the rest in an order drawn from
    the key, up to ``cap_per_class``.

    Newest-first let the last labeller take the whole cap: one client's 20,000 labels displaced
    all 1,000 earlier ones. Admins' labels are trusted, so nobody else's can displace them; the
    others (``--feedback-open-labels``) are a keyed sample: a flood of n against m earlier labels
    keeps about m / (n + m) of the cap for those, not none, and its sender cannot pick which of
    its images are kept. The sample is stable: a kept image stays kept until outranked."""

    def rank(item: tuple[str, tuple[int, bool]]) -> tuple[bool, float]:
        digest, (_, admin) = item
        return not admin, keyed_fraction(digest, key, b"cap")

    kept: dict[str, int] = {}
    per_class = [0] * len(CLASS_NAMES)
    for digest, (label, _) in sorted(labels.items(), key=rank):
        if per_class[label] < cap_per_class:
            per_class[label] += 1
            kept[digest] = label
    train = {d: y for d, y in kept.items() if not is_held_out(d, holdout_share, key)}
    holdout = {d: y for d, y in kept.items() if is_held_out(d, holdout_share, key)}
    return train, holdout, len(labels) - len(kept)


def _usable(image: Any, label: Any) -> bool:
    return (
        isinstance(image, bytes | memoryview)
        and len(image) == IMAGE_BYTES
        and isinstance(label, int)
        and 0 <= label < len(CLASS_NAMES)
    )


def _rows(engine: sa.Engine, model: str) -> Iterator[tuple[bytes | None, int, bool]]:
    """Every labelled, captured row of ``model``, streamed (the log may hold a million): its
    image as pixels (``captured_images.unpack``: None where it holds none), its label, and
    whether an admin gave it."""
    import sqlalchemy as sa

    columns = {column["name"] for column in sa.inspect(engine).get_columns("predictions")}
    query = LABELLED.format(by="labelled_by" if "labelled_by" in columns else "NULL")
    with engine.connect() as connection:
        result = connection.execution_options(stream_results=True, yield_per=1000).execute(
            sa.text(query), {"model": model}
        )
        for image, label, by in result:
            stored = bytes(image) if isinstance(image, memoryview) else image
            pixels = unpack(stored, IMAGE_BYTES) if isinstance(stored, bytes) else stored
            yield pixels, label, by == ADMIN


def _last_labels(
    engine: sa.Engine, model: str, open_labels: bool
) -> tuple[dict[str, tuple[int, bool]], dict[str, int]]:
    """First pass: hash -> (last label, given by an admin), oldest first; and the rows read,
    the unusable ones, and those left out for not being an admin's."""
    labels: dict[str, tuple[int, bool]] = {}
    counts = {"rows": 0, "unusable": 0, "not_admin": 0}
    for image, label, admin in _rows(engine, model):
        counts["rows"] += 1
        if image is None or not _usable(image, label):
            counts["unusable"] += 1
            continue
        if not admin:
            counts["not_admin"] += 1
            if not open_labels:
                continue
        digest = hashlib.sha256(image).hexdigest()
        if not admin and labels.get(digest, (0, False))[1]:
            continue  # anyone may send an admin's pixels again: the admin's label stands
        labels.pop(digest, None)  # re-inserted: a relabel moves it to the newest end
        labels[digest] = (label, admin)
    return labels, counts


def _collect(
    engine: sa.Engine, model: str, train: dict[str, int], holdout: dict[str, int]
) -> tuple[Split, Split]:
    """Second pass: the pixels of the chosen hashes, with their (last) labels, on their sides."""
    order = sorted({**train, **holdout})
    place = {digest: i for i, digest in enumerate(order)}
    images = np.empty((len(order), *IMAGE_SHAPE), dtype=np.uint8)
    found = np.zeros(len(order), dtype=bool)
    for image, label, _ in _rows(engine, model):
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
    key: bytes,
    cap_per_class: int = DEFAULT_CAP_PER_CLASS,
    holdout_share: float = DEFAULT_HOLDOUT_SHARE,
    open_labels: bool = False,
) -> Feedback:
    """The labelled, captured images of ``model`` in the log at ``source`` (file or URL): its
    admins' labels only, unless ``open_labels``; split and sampled with ``key``."""
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
            labels, counts = _last_labels(engine, model, open_labels)
            train_hashes, holdout_hashes, capped = choose(labels, cap_per_class, holdout_share, key)
            train, holdout = _collect(engine, model, train_hashes, holdout_hashes)
        finally:
            engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        reason = str(exc.orig) if isinstance(exc, sa.exc.DBAPIError) else str(exc)
        raise DataError(f"{shown}: cannot read the prediction log's table ({reason})") from None
    summary = {
        "source": shown,
        "model": model,
        "rows": counts["rows"],
        "unusable": counts["unusable"],
        "not_admin_labels": counts["not_admin"],  # FEEDBACK_OPEN's, or of unknown origin
        "open_labels": open_labels,  # whether those were used
        "unique_images": len(labels),
        "dropped_by_cap": capped,
        "cap_per_class": cap_per_class,
        "holdout_share": holdout_share,
        "train": len(train),
        "holdout": len(holdout),
        "train_per_class": np.bincount(train.labels, minlength=len(CLASS_NAMES)).tolist(),
    }
    return Feedback(train, holdout, summary)
