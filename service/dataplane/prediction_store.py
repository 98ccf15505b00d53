"""The prediction log's tables and statements, in SQLAlchemy Core: one code path for SQLite (the
default, a WAL file under ``DATA_DIR``) and PostgreSQL (``PREDICTION_LOG_URL``)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import sqlite3
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

METADATA = sa.MetaData()
# One row per answered image; ``item`` is its place in the request's batch.
PREDICTIONS = sa.Table(
    "predictions",
    METADATA,
    sa.Column("row", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("request_id", sa.String(128), nullable=False),
    sa.Column("item", sa.Integer, nullable=False),
    sa.Column("model", sa.String(128), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("time", sa.Float, nullable=False, index=True),  # Unix seconds
    sa.Column("top1", sa.Integer, nullable=False),  # class index
    sa.Column("top1_probability", sa.Float, nullable=False),
    sa.Column("image", sa.LargeBinary, nullable=True),  # 32x32x3 uint8 (captured_images)
    sa.Column("label", sa.Integer, nullable=True),  # class index from feedback (label_store)
    sa.Column("labelled_at", sa.Float, nullable=True),
    # who gave the label (ADMIN or OPEN): the retrain trains on admins' labels only by default
    sa.Column("labelled_by", sa.String(8), nullable=True),
    # the monitor reads one version's window: a range scan of this index, not of the table
    sa.Index("predictions_model_version_time", "model", "version", "time"),
    # feedback finds an id's newest record of an item here: with the id alone indexed, labelling
    # 1,024 items of an id a client had reused 327,680 times took 43 s under the write lock
    sa.Index("predictions_request_item_row", "request_id", "item", "row"),
    # pruning counts the labelled rows and cuts the unlabelled ones from the newest here: over
    # the table, a prune of a million rows with captured images walked 1.6 s of pages
    sa.Index("predictions_label_row", "label", "row"),
)


# Records a pruning transaction deletes at most: the write lock's hold, and the WAL, which takes
# about 4 kB a deleted record with a captured image (50,000 grew it to 211 MB)
DELETE_ROWS = 5_000
WAL_KEPT_BYTES = 16 * 1024 * 1024  # the WAL is cut back to this once checkpointed

# What the writer inserts, in this order (``label`` and ``labelled_at`` start empty).
COLUMNS = ("request_id", "item", "model", "version", "time", "top1", "top1_probability", "image")
Row = tuple[str, int, str, int, float, int, float, bytes | None]
Record = tuple[int, str, int]  # a record's row (its key), model and version
ADMIN = "admin"  # labelled by the admin token's holder (or ADMIN_LOOPBACK's local client)
OPEN = "open"  # labelled by anyone, through FEEDBACK_OPEN
ADDED_COLUMNS = ("labelled_by",)  # columns a table made before them gets on open


def database_url(url: str | None, data_dir: Path) -> str:
    """``url`` as given, else a SQLite file in ``data_dir`` (made by ``connect``)."""
    if url:
        return url
    return f"sqlite:///{(data_dir / 'predictions.sqlite3').resolve()}"


def connect(url: str) -> Engine:
    """An engine with the tables made; SQLite in WAL mode with a short lock wait."""
    if url.startswith("sqlite"):
        database = sa.engine.make_url(url).database
        # A "file:" URI (uri=true) names its file itself: no folder to make for it.
        if database and database != ":memory:" and not database.startswith("file:"):
            try:
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # as a database that cannot be opened: retried, a 503
                raise sa.exc.OperationalError("mkdir", None, OSError(exc.strerror)) from None
        engine = sa.create_engine(url, connect_args={"timeout": 2.0})

        @sa.event.listens_for(engine, "connect")
        def _wal(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA journal_size_limit={WAL_KEPT_BYTES}")  # else at its largest
            cursor.close()

    else:
        # a dead server costs the writer seconds, not the TCP timeout (the queue absorbs them)
        connect_args = {"connect_timeout": 5} if url.startswith("postgresql") else {}
        engine = sa.create_engine(url, pool_pre_ping=True, connect_args=connect_args)
    try:
        METADATA.create_all(engine)
    except sa.exc.DBAPIError:  # another process (a replica) made them between check and create
        METADATA.create_all(engine)
    for index in PREDICTIONS.indexes:  # a table made before an index was added gets it too
        with contextlib.suppress(sa.exc.DBAPIError):  # made by a replica meanwhile
            index.create(engine, checkfirst=True)
    _add_columns(engine)
    return engine


def _add_columns(engine: Engine) -> None:
    """``ALTER TABLE ... ADD COLUMN`` for each of ADDED_COLUMNS a log made before it lacks
    (``create_all`` leaves an existing table as it is); its old rows hold NULL there."""
    present = {column["name"] for column in sa.inspect(engine).get_columns(PREDICTIONS.name)}
    quote = engine.dialect.identifier_preparer
    for name in ADDED_COLUMNS:
        if name in present:
            continue
        column = PREDICTIONS.c[name]
        kind = column.type.compile(dialect=engine.dialect)
        statement = (
            f"ALTER TABLE {quote.format_table(PREDICTIONS)} ADD COLUMN {quote.quote(name)} {kind}"
        )
        with contextlib.suppress(sa.exc.DBAPIError), engine.begin() as connection:
            connection.exec_driver_sql(statement)  # a replica may have added it meanwhile


def insert(engine: Engine, rows: Sequence[Row]) -> None:
    """One transaction for a batch of records, the cheapest way each driver offers: the writer's
    Python time holds the GIL the requests need (``python -m bench log-cost`` measures it).

    - psycopg: COPY (2 us a row of the writer's CPU here against 15-22 us for an insert);
    - SQLite: multi-row ``INSERT ... VALUES (...), (...)`` statements, as many rows each as its
      variable limit allows (a whole batch, on any SQLite since 3.32). One statement is one
      ``sqlite3_step`` with the GIL released once; ``executemany`` steps once per row and takes
      the GIL back between rows, which a busy event loop pays for, and SQLite's own ``json_each``
      unpacking of a JSON array (the previous way) cost twice the CPU of binding the values;
    - else the Core insert.
    """
    if engine.dialect.driver == "psycopg":
        _copy(engine, rows)
        return
    with engine.begin() as connection:
        if engine.dialect.name == "sqlite":
            per_statement = _sqlite_rows_per_statement(connection)
            for start in range(0, len(rows), per_statement):
                chunk = rows[start : start + per_statement]
                values = tuple(itertools.chain.from_iterable(chunk))
                connection.exec_driver_sql(_values_insert(engine.dialect, len(chunk)), values)
            return
        positional = _positional_insert(engine.dialect)
        if positional is not None:
            connection.exec_driver_sql(positional, list(rows))
        else:
            records = [dict(zip(COLUMNS, row, strict=True)) for row in rows]
            connection.execute(PREDICTIONS.insert(), records)


def _sqlite_rows_per_statement(connection: sa.Connection) -> int:
    """Rows one statement may bind: SQLite's variable limit (32766 since 3.32, 999 before)
    over the row's width."""
    driver_connection: Any = connection.connection.driver_connection
    limit = int(driver_connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER))
    return max(1, limit // len(COLUMNS))


@functools.lru_cache(maxsize=16)
def _values_insert(dialect: sa.engine.Dialect, rows: int) -> str:
    """``INSERT INTO predictions (COLUMNS) VALUES (?, ...), ...`` for ``rows`` rows (qmark)."""
    quote = dialect.identifier_preparer
    columns = ", ".join(quote.quote(name) for name in COLUMNS)
    row = "(" + ", ".join(["?"] * len(COLUMNS)) + ")"
    return f"INSERT INTO {quote.format_table(PREDICTIONS)} ({columns}) VALUES " + ", ".join(
        [row] * rows
    )


def _copy(engine: Engine, rows: Sequence[Row]) -> None:
    """``COPY predictions (COLUMNS) FROM STDIN`` through psycopg, in one transaction; its errors
    raised as SQLAlchemy's (an OperationalError stays one: the writer retries those)."""
    quote = engine.dialect.identifier_preparer
    names = ", ".join(quote.quote(name) for name in COLUMNS)
    statement = f"COPY {quote.format_table(PREDICTIONS)} ({names}) FROM STDIN"
    with engine.begin() as connection:
        driver_connection: Any = connection.connection.driver_connection
        try:
            with driver_connection.cursor() as cursor, cursor.copy(statement) as copy:
                for row in rows:
                    copy.write_row(row)
        except engine.dialect.loaded_dbapi.Error as exc:
            error = engine.dialect.loaded_dbapi.Error
            raise sa.exc.DBAPIError.instance(statement, None, exc, error) from exc


@functools.lru_cache(maxsize=8)
def _positional_insert(dialect: sa.engine.Dialect) -> str | None:
    """The insert of COLUMNS as the dialect's compiler writes it, if its parameters are
    positional in COLUMNS' order; else None."""
    statement = PREDICTIONS.insert().values({name: sa.bindparam(name) for name in COLUMNS})
    compiled = statement.compile(dialect=dialect)
    if not compiled.positional or tuple(compiled.positiontup or ()) != COLUMNS:
        return None
    return str(compiled)


def prune(engine: Engine, max_age_s: float, max_rows: int) -> int:
    """Drop records older than ``max_age_s``, then past ``max_rows`` the oldest unlabelled
    ones first (``_keep_newest``); the rows dropped."""
    old = PREDICTIONS.c.time < time.time() - max_age_s
    count = _delete_oldest(engine, old, sys.maxsize, by="time")
    return count + _keep_newest(engine, max_rows, _count(engine))


def stored_bytes(engine: Engine) -> int | None:
    """Bytes the log's SQLite file holds in pages in use (its freed pages are reused, not given
    back: the file stays at its largest); None for other databases, whose size after a delete
    waits for their vacuum (their own quotas bound them)."""
    if engine.dialect.name != "sqlite":
        return None
    with engine.connect() as connection:
        pragma = connection.exec_driver_sql
        page_size = int(pragma("PRAGMA page_size").scalar_one())
        pages = int(pragma("PRAGMA page_count").scalar_one())
        free = int(pragma("PRAGMA freelist_count").scalar_one())
    return (pages - free) * page_size


def checkpoint(engine: Engine) -> None:
    """Write SQLite's WAL back into the file (after a prune, which fills it with the pages it
    frees), so that the next write starts it afresh, cut to ``WAL_KEPT_BYTES``. Passive: a
    TRUNCATE one takes the write lock and waits for every reader (a retrain streaming the log)
    up to the 2 s busy timeout, every label waiting behind it."""
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")


def prune_to_bytes(engine: Engine, max_bytes: int, keep_share: float = 0.9) -> int:
    """Past ``max_bytes`` stored (``stored_bytes``), drop the oldest records (unlabelled first),
    keeping the share of rows that fills ``keep_share`` of it at the present bytes a row; the
    rows dropped. Rows are what a client controls (a long request id, captured images): a bound
    in rows alone let the file grow with them."""
    used = stored_bytes(engine)
    if used is None or used <= max_bytes:
        return 0
    total = _count(engine)
    return _keep_newest(engine, int(total * keep_share * max_bytes / used), total)


def _keep_newest(engine: Engine, keep: int, total: int) -> int:
    """Delete all but ``keep`` of the ``total`` records, the oldest unlabelled ones first: labels
    are what the retrain learns from and cost someone's judgement, while a flood of cheap
    requests makes unlabelled rows by the million. Labelled rows go by age, or oldest first
    where they alone are past ``keep``. The rows dropped.

    Each cut is counted from the newest row, not from the oldest: two workers pruning from the
    same count (``WORKERS`` > 1, each with its writer) then cut at the same row, where counting
    ``total - keep`` from the oldest had each delete that many."""
    keep = max(keep, 0)
    if total <= keep:
        return 0
    labelled = _count(engine, PREDICTIONS.c.label.is_not(None))
    count = _delete_all_but_newest(engine, PREDICTIONS.c.label.is_(None), max(keep - labelled, 0))
    if labelled > keep:
        count += _delete_all_but_newest(engine, sa.true(), keep)
    return count


def _delete_all_but_newest(engine: Engine, where: sa.ColumnElement[bool], keep: int) -> int:
    """Delete the records matching ``where`` but the newest ``keep`` of them, oldest first."""
    column = PREDICTIONS.c.row
    newest_to_go = sa.select(column).where(where).order_by(column.desc()).offset(keep).limit(1)
    with engine.connect() as connection:
        cut = connection.execute(newest_to_go).scalar_one_or_none()
    return 0 if cut is None else _delete_oldest(engine, where & (column <= cut), sys.maxsize)


def _delete_oldest(
    engine: Engine, where: sa.ColumnElement[bool], most: int, by: str = "row"
) -> int:
    """Delete about ``most`` of the oldest records that match ``where``, oldest by ``by`` (an
    indexed column; its ties at a cut go together), ``DELETE_ROWS`` a transaction: one delete of
    550,000 rows held SQLite's write lock 3.9 s here, past the 2 s a feedback call waits for
    it. The rows dropped."""
    table, count = PREDICTIONS, 0
    column = table.c[by]
    while count < most:
        step = min(DELETE_ROWS, most - count)
        last = sa.select(column).where(where).order_by(column).offset(step - 1).limit(1)
        with engine.begin() as connection:
            cut = connection.execute(last).scalar_one_or_none()
            through = where if cut is None else where & (column <= cut)
            count += max(connection.execute(table.delete().where(through)).rowcount or 0, 0)
        if cut is None:  # fewer than ``step`` were left: all gone
            break
    return count


def _count(engine: Engine, where: sa.ColumnElement[bool] | None = None) -> int:
    counted = sa.select(sa.func.count()).select_from(PREDICTIONS)
    with engine.connect() as connection:
        return int(
            connection.execute(counted if where is None else counted.where(where)).scalar_one()
        )


def read_all(engine: Engine) -> list[dict[str, Any]]:
    """Every record, oldest first (for tests and exports)."""
    with engine.connect() as connection:
        result = connection.execute(sa.select(PREDICTIONS).order_by(PREDICTIONS.c.row))
        return [dict(r._mapping) for r in result]


def probability_bin(bins: int) -> sa.ColumnElement[int]:
    """``quality.bin_of`` in SQL, the same on SQLite and PostgreSQL (whose integer casts round
    where SQLite's truncate): a ladder of ``top1_probability < k / bins``."""
    p = PREDICTIONS.c.top1_probability
    return sa.case(*((p < k / bins, k - 1) for k in range(1, bins)), else_=bins - 1)


def window_counts(
    engine: Engine, model: str, version: int, since: float, until: float, bins: int
) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int, int, float]]]:
    """One version's records in [since, until], aggregated in the database: (top1, bin, count)
    over all of them, and (label, top1, bin, count, sum of top1_probability) over the labelled."""
    table, bin_ = PREDICTIONS, probability_bin(bins).label("bin")
    window = (
        (table.c.model == model)
        & (table.c.version == version)
        & (table.c.time >= since)
        & (table.c.time <= until)
    )
    count = sa.func.count().label("n")
    served = sa.select(table.c.top1, bin_, count).where(window).group_by(table.c.top1, "bin")
    labelled = (
        sa.select(table.c.label, table.c.top1, bin_, count, sa.func.sum(table.c.top1_probability))
        .where(window & table.c.label.is_not(None))
        .group_by(table.c.label, table.c.top1, "bin")
    )
    with engine.connect() as connection:
        all_rows = [(int(a), int(b), int(n)) for a, b, n in connection.execute(served)]
        labelled_rows = [
            (int(a), int(b), int(c), int(n), float(s or 0.0))
            for a, b, c, n, s in connection.execute(labelled)
        ]
    return all_rows, labelled_rows
