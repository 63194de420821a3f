"""Engine factories, schema creation and versioning, and the portable upsert helper.

SQLite specifics (URIs, pragmas, transaction begin) live here and nowhere else, so that another
backend is a new engine factory rather than a rewrite.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache
from itertools import chain
from typing import Any, Literal
from urllib.parse import quote

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    Table,
    bindparam,
    create_engine,
    event,
    func,
    inspect,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects import sqlite as sqlite_dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool
from sqlalchemy.sql.expression import ColumnElement

from ovpnmon_common import schema

BUSY_TIMEOUT_MS = 5000


class DatabaseError(Exception):
    """The database cannot be used as it is; the message says why and what to do."""


def writer_engine(path: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """The collector's engine: WAL, ``synchronous=NORMAL``, a busy timeout, foreign keys.

    Transactions start with ``BEGIN IMMEDIATE`` so a writer takes its lock up front instead of
    failing halfway through a poll when it tries to upgrade a read lock.
    """

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            path, timeout=busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )

    engine = create_engine("sqlite+pysqlite://", creator=connect, poolclass=QueuePool, pool_size=2)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        if cursor.execute("PRAGMA page_count").fetchone()[0] == 0:
            # Only possible on a new, empty file; lets `prune` hand space back with incremental
            # vacuum instead of a VACUUM that blocks readers.
            cursor.execute("PRAGMA auto_vacuum=INCREMENTAL")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def close_writer(engine: Engine) -> None:
    """Leave the file readable by a read-only reader once the writer is gone.

    A read-only reader cannot create WAL's ``-shm`` file, and SQLite deletes it when the last
    connection closes; so on a clean stop the database goes back to rollback-journal mode (the
    next writer turns WAL on again). That needs the only connection: while a reader holds the
    file open the switch fails, and then the ``-wal``/``-shm`` files stay and remain readable.
    """
    engine.dispose()
    if engine.dialect.name == "sqlite":
        try:
            raw = engine.raw_connection()  # a fresh connection, outside any transaction
            try:
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                raw.execute("PRAGMA journal_mode=DELETE")
            finally:
                raw.close()
        except Exception:
            pass
    engine.dispose()


def reader_uri(path: str) -> str:
    """The ``file:`` URI that opens ``path`` read-only (never ``immutable``: the DB is live)."""
    return f"file:{quote(os.path.abspath(path))}?mode=ro"


def reader_engine(
    path: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS, pool_size: int = 8
) -> Engine:
    """The API's engine: ``mode=ro`` URI plus ``PRAGMA query_only`` on every connection.

    Each transaction is an explicit deferred ``BEGIN`` so that the several SELECTs of one request
    read one consistent snapshot while the collector commits.
    """
    uri = reader_uri(path)

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            uri,
            uri=True,
            timeout=busy_timeout_ms / 1000,
            isolation_level=None,
            check_same_thread=False,
        )

    engine = create_engine(
        "sqlite+pysqlite://", creator=connect, poolclass=QueuePool, pool_size=pool_size
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: sqlite3.Connection, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA query_only=1")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN")

    return engine


class ChangeCounter:
    """A value that moves whenever anything is committed to the database, by any process; cheap
    enough to read on every request (microseconds).

    SQLite's ``PRAGMA data_version`` on one dedicated read-only connection changes when another
    connection commits. The file's identity is part of the value: a database replaced by a new
    file (a restore) is a new inode, and the connection is reopened on it.
    """

    def __init__(self, path: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> None:
        self.path = path
        self._timeout = busy_timeout_ms / 1000
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._file: tuple[int, int] | None = None

    def value(self) -> tuple[int, int, int]:
        """Raises ``OSError`` or ``sqlite3.Error`` when the file cannot be read."""
        stat = os.stat(self.path)
        file = (stat.st_dev, stat.st_ino)
        with self._lock:
            if self._conn is None or file != self._file:
                self.close()
                self._conn = sqlite3.connect(
                    reader_uri(self.path),
                    uri=True,
                    timeout=self._timeout,
                    isolation_level=None,
                    check_same_thread=False,
                )
                self._file = file
            (version,) = self._conn.execute("PRAGMA data_version").fetchone()
            return (*file, version)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- schema -----------------------------------------------------------------------------------


def schema_version(conn: Connection) -> int | None:
    """The stored schema version, or None for a database ovpnmon never initialised."""
    if not inspect(conn).has_table(schema.meta.name):
        return None
    value = get_meta(conn, "schema_version")
    return int(value) if value is not None else None


def _to_version_2(conn: Connection) -> None:
    """1 -> 2: open sessions' counters move to one packed row per source, open sessions get a
    partial index instead of an index on every session's disconnection time, and raw samples are
    keyed time first. No counter to convert: a session without an entry in session_counters keeps
    the counters its ``sessions`` row holds, which is where version 1 kept them. The raw samples
    are copied into the new key (seconds per million rows)."""
    schema.session_counters.create(conn)
    next(i for i in schema.sessions.indexes if i.name == "ix_sessions_open").create(conn)
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_sessions_disconnected_at")
    # raw samples re-keyed time first (and without the foreign key): copied in key order
    conn.exec_driver_sql("ALTER TABLE usage_history RENAME TO usage_history_v1")
    schema.usage_history.create(conn)
    u = schema.usage_history
    old = Table("usage_history_v1", MetaData(), *(Column(c.name, c.type) for c in u.columns))
    columns = [c.name for c in u.columns]
    conn.execute(
        u.insert().from_select(
            columns, select(*(old.c[n] for n in columns)).order_by(old.c.ts, old.c.client_id)
        )
    )
    old.drop(conn)


# from-version -> function upgrading to from-version + 1
MIGRATIONS: dict[int, Any] = {1: _to_version_2}


def init_db(engine: Engine) -> tuple[int | None, int]:
    """Create or upgrade the schema; idempotent. Returns (version before, version after)."""
    with engine.begin() as conn:
        before = schema_version(conn)
        if before is not None and before > schema.SCHEMA_VERSION:
            raise DatabaseError(
                f"the database has schema version {before}, newer than this ovpnmon "
                f"understands ({schema.SCHEMA_VERSION}): upgrade ovpnmon"
            )
        version = before
        if version is None:
            schema.metadata.create_all(conn)
            version = schema.SCHEMA_VERSION
        while version < schema.SCHEMA_VERSION:
            MIGRATIONS[version](conn)
            version += 1
        set_meta(conn, "schema_version", str(version))
    return before, version


def check_schema(engine: Engine, path: str) -> None:
    """Raise ``DatabaseError`` unless ``path`` holds a readable database of our schema version."""
    try:
        with engine.connect() as conn:
            version = schema_version(conn)
    except DBAPIError as exc:  # unreadable, locked, or not an SQLite file at all
        raise DatabaseError(f"cannot read database {path}: {describe_error(exc)}") from None
    if version is None:
        raise DatabaseError(
            f"database {path} has no ovpnmon schema: run 'ovpnmon-collector init-db' "
            "(or start the collector) first"
        )
    if version > schema.SCHEMA_VERSION:
        raise DatabaseError(
            f"database {path} has schema version {version}, newer than this ovpnmon understands "
            f"({schema.SCHEMA_VERSION}): upgrade ovpnmon"
        )
    if version < schema.SCHEMA_VERSION:
        raise DatabaseError(
            f"database {path} has schema version {version}, older than this ovpnmon needs "
            f"({schema.SCHEMA_VERSION}): run 'ovpnmon-collector init-db' to upgrade it"
        )


def describe_error(exc: BaseException) -> str:
    """A database failure in SQLite's own words, without SQLAlchemy's statement dump; any other
    exception as its message."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig)
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__


# --- key/value and upserts --------------------------------------------------------------------


def get_meta(conn: Connection, key: str) -> str | None:
    return conn.execute(select(schema.meta.c.value).where(schema.meta.c.key == key)).scalar()


def get_meta_prefix(conn: Connection, prefix: str) -> dict[str, str]:
    """Every meta entry whose key starts with ``prefix`` (keys returned without it)."""
    rows = conn.execute(
        select(schema.meta.c.key, schema.meta.c.value).where(
            schema.meta.c.key.startswith(prefix, autoescape=True)
        )
    )
    return {key[len(prefix) :]: value for key, value in rows}


def set_meta(conn: Connection, key: str, value: str) -> None:
    upsert(conn, schema.meta, [{"key": key, "value": value}], ["key"])


_NAMED_SQLITE = sqlite_dialect.dialect(paramstyle="named")
_QMARK_SQLITE = sqlite_dialect.dialect(paramstyle="qmark")
_COMPILED: dict[tuple[Any, ...], tuple[str, dict[str, Any]]] = {}


def _compiled(conn: Connection, stmt: Any, keys: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """SQL text with named parameters for ``stmt`` on ``conn``'s dialect, compiled once per
    process, and the values of the binds that ``keys`` do not supply."""
    key = (stmt, keys, conn.dialect.name)
    cached = _COMPILED.get(key)
    if cached is None:
        dialect = _NAMED_SQLITE if conn.dialect.name == "sqlite" else conn.dialect
        compiled = stmt.compile(dialect=dialect, column_keys=list(keys) or None)
        if compiled.positional:  # pragma: no cover - sqlite and psycopg use named styles here
            raise NotImplementedError(f"needs a named paramstyle, not {dialect.paramstyle}")
        constants = {
            name: b.value
            for name, b in compiled.binds.items()
            if name not in keys and not b.required
        }
        cached = _COMPILED[key] = (str(compiled), constants)
    return cached


def executemany(conn: Connection, stmt: Any, rows: Sequence[Mapping[str, Any]]) -> None:
    """Run a Core statement once per row, without SQLAlchemy's per-row parameter processing.

    For the collector's hot path (tens of thousands of rows a poll, every few seconds): the
    statement is compiled once per process with named parameters (build it once and pass the
    same object) and the row dicts go straight to the driver's ``executemany``. Only for plain
    values (ints, floats, strings, bools) that need no type processing.
    """
    if not rows:
        return
    sql, constants = _compiled(conn, stmt, tuple(rows[0]))
    params = [{**constants, **row} for row in rows] if constants else list(rows)
    conn.exec_driver_sql(sql, params)


class Prepared:
    """A Core ``select()`` built once and compiled once: executing it skips statement
    construction and SQLAlchemy's cache-key work (the API's per-request overhead).

    Parameters are ``bindparam()`` names given as keywords; only plain values, no expanding IN.
    """

    def __init__(self, stmt: Any) -> None:
        self.stmt = stmt

    def __call__(self, conn: Connection, **params: Any) -> Any:
        sql, constants = _compiled(conn, self.stmt, ())
        return conn.exec_driver_sql(sql, {**constants, **params} if constants else params)


Merge = Literal["replace", "add", "max", "keep"]


def upsert(
    conn: Connection,
    table: Any,
    rows: Sequence[Mapping[str, Any]],
    keys: Iterable[str],
    merge: Mapping[str, Merge] | None = None,
) -> None:
    """Insert ``rows``; on a key conflict update the other columns.

    ``merge`` says per column how the stored and the new value combine (default ``replace``):
    ``add`` for accumulating counters, ``max`` for peaks, ``keep`` to leave the stored value.
    When every column is ``keep`` a conflict does nothing. One statement, executemany'd.
    """
    if not rows:
        return
    stmt = _upsert_statement(
        conn.dialect.name, table, tuple(keys), tuple(rows[0]), tuple(sorted((merge or {}).items()))
    )
    executemany(conn, stmt, rows)


# Parameters of one statement of insert_tuples / upsert_tuples on SQLite: the 999 that every
# SQLite version allows. At most ROWS_PER_STATEMENT rows each (400 parameters for four columns).
MAX_PARAMETERS = 999
ROWS_PER_STATEMENT = 100


def insert_tuples(
    conn: Connection, table: Any, columns: tuple[str, ...], rows: Sequence[tuple[Any, ...]]
) -> None:
    """``INSERT`` of tuples in ``columns`` order, many rows per statement (see upsert_tuples)."""
    _write_tuples(conn, table, columns, rows, None, ())


def upsert_tuples(
    conn: Connection,
    table: Any,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
    keys: Iterable[str],
    merge: Mapping[str, Merge] | None = None,
) -> None:
    """``upsert`` of tuples in ``columns`` order: the hot path (a sample per client per poll).

    On SQLite the rows go up to ``ROWS_PER_STATEMENT`` at a time into one multi-row
    ``INSERT ... VALUES (...), (...) ON CONFLICT ...``: SQLite does the same work per row, but
    the driver binds, steps and resets a statement once per hundred rows instead of once per
    row — 9,000 samples in about 4 ms instead of 10 (bench/poll_10k.py). Other dialects get the
    one-row statement with dicts.
    """
    _write_tuples(conn, table, columns, rows, tuple(keys), tuple(sorted((merge or {}).items())))


def _write_tuples(
    conn: Connection,
    table: Any,
    columns: tuple[str, ...],
    rows: Sequence[tuple[Any, ...]],
    keys: tuple[str, ...] | None,
    merge_items: tuple[tuple[str, Merge], ...],
) -> None:
    if not rows:
        return
    if conn.dialect.name != "sqlite":
        stmt = _upsert_statement(conn.dialect.name, table, keys, columns, merge_items)
        executemany(conn, stmt, [dict(zip(columns, row, strict=True)) for row in rows])
        return
    per = min(ROWS_PER_STATEMENT, MAX_PARAMETERS // len(columns))
    whole = len(rows) - len(rows) % per
    if whole:
        flat = tuple(chain.from_iterable(rows[:whole]))
        if len(flat) != whole * len(columns):
            raise ValueError(f"every row must have {len(columns)} values, in {columns} order")
        width = per * len(columns)
        sql = _multirow_sql(table, keys, columns, merge_items, per)
        conn.exec_driver_sql(sql, [flat[at : at + width] for at in range(0, len(flat), width)])
    if whole < len(rows):
        sql = _multirow_sql(table, keys, columns, merge_items, 1)
        conn.exec_driver_sql(sql, [tuple(row) for row in rows[whole:]])


@lru_cache(maxsize=64)
def _multirow_sql(
    table: Any,
    keys: tuple[str, ...] | None,
    columns: tuple[str, ...],
    merge_items: tuple[tuple[str, Merge], ...],
    count: int,
) -> str:
    """SQLite text of an insert (or upsert) of ``count`` rows, its ``?`` parameters row after
    row, each row's in ``columns`` order (checked: a mismatch raises rather than store values in
    wrong columns)."""
    stmt = _upsert_statement("sqlite", table, keys, columns, merge_items, count)
    compiled = stmt.compile(dialect=_QMARK_SQLITE)
    order = tuple(compiled.positiontup or ())
    expected = tuple(f"{name}_{row}" for row in range(count) for name in columns)
    if order != expected:
        raise ValueError(f"statement takes its parameters in the order {order}, not {expected}")
    return str(compiled)


@lru_cache(maxsize=64)
def _upsert_statement(
    dialect: str,
    table: Any,
    keys: tuple[str, ...] | None,
    columns: tuple[str, ...],
    merge_items: tuple[tuple[str, Merge], ...],
    rows: int = 0,
) -> Any:
    """``INSERT ... ON CONFLICT (keys)`` of one row bound by column names, or of ``rows`` rows
    bound as ``<column>_<row>``; a plain ``INSERT`` when ``keys`` is None."""
    merge = dict(merge_items)
    stmt: Any
    if dialect == "sqlite":
        stmt = sqlite_dialect.insert(table)
    elif dialect == "postgresql":
        stmt = postgresql.insert(table)
    else:  # pragma: no cover - only the two dialects above are supported
        raise NotImplementedError(f"upsert is not implemented for {dialect}")
    if rows:
        stmt = stmt.values(
            [{name: bindparam(f"{name}_{row}") for name in columns} for row in range(rows)]
        )
    if keys is None:
        return stmt
    excluded = stmt.excluded
    updates: dict[str, ColumnElement[Any]] = {}
    for name in columns:
        if name in keys:
            continue
        how = merge.get(name, "replace")
        if how == "keep":
            continue
        if how == "add":
            updates[name] = table.c[name] + excluded[name]
        elif how == "max":
            updates[name] = (
                func.max(table.c[name], excluded[name])
                if dialect == "sqlite"
                else func.greatest(table.c[name], excluded[name])
            )
        else:
            updates[name] = excluded[name]
    if updates:
        return stmt.on_conflict_do_update(index_elements=list(keys), set_=updates)
    return stmt.on_conflict_do_nothing(index_elements=list(keys))
