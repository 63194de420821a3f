"""How each process connects: the collector's writer engine, the API's read-only engine, and
the change counter that tells a reader something was committed.

SQLite's specifics (URIs, pragmas, how a transaction begins, page counts and incremental
vacuum) live here and nowhere else; PostgreSQL's are in ``postgres``. ``database`` is a SQLite
file path or a PostgreSQL URL (``location``): each factory here hands a URL to ``postgres``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any, Protocol
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.pool import QueuePool

from ovpnmon_common.storage import location, postgres

BUSY_TIMEOUT_MS = 5000


def writer_engine(path: str, *, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> Engine:
    """The collector's engine: WAL, ``synchronous=NORMAL``, a busy timeout, foreign keys.

    Transactions start with ``BEGIN IMMEDIATE`` so a writer takes its lock up front instead of
    failing halfway through a poll when it tries to upgrade a read lock. (A PostgreSQL URL:
    ``postgres.writer_engine``.)
    """
    if location.is_postgres(path):
        return postgres.writer_engine(path, lock_timeout_ms=busy_timeout_ms)

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


def hold_tiers(conn: Connection, *, shared: bool) -> None:
    """Between several writers of one database: a poll (``shared``) and a rollup or retention
    transaction (alone) never overlap, so a rollup never sums a bucket while a poll is adding
    to it, and a poll sees the watermark a rollup moved before deciding which tiers it is late
    for. On SQLite a writer's transaction already holds the whole database."""
    if conn.dialect.name == "postgresql":
        postgres.hold(conn, postgres.TIERS, shared=shared)


def next_ids(conn: Connection, table: str, count: int) -> list[int]:
    """``count`` new ids of ``table`` (``clients``, ``sessions``) for a writer to insert with:
    from its sequence on PostgreSQL, where several collectors insert at once; after the highest
    on SQLite, whose writer holds the whole database. Plain SQL: a Core select() costs ten times
    as much to build and compile, on every poll that opens a session."""
    if conn.dialect.name == "postgresql":
        return postgres.next_ids(conn, table, count)
    first = int(conn.exec_driver_sql(f"SELECT max(id) FROM {table}").scalar() or 0) + 1
    return list(range(first, first + count))


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
    read one consistent snapshot while the collector commits. (A PostgreSQL URL:
    ``postgres.reader_engine``.)
    """
    if location.is_postgres(path):
        return postgres.reader_engine(path, pool_size=pool_size)
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


class Counter(Protocol):
    """What moves whenever anything is committed: ``ChangeCounter`` (SQLite) or
    ``postgres.NotifyCounter``."""

    def value(self) -> Hashable:
        """Raises ``OSError`` or ``sqlite3.Error`` when the database cannot be read."""
        ...

    def close(self) -> None: ...


def change_counter(database: str) -> Counter:
    """The change counter of ``database``: SQLite's ``data_version``, or PostgreSQL's
    notifications."""
    if location.is_postgres(database):
        return postgres.NotifyCounter(database)
    return ChangeCounter(database)


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
        """Close the dedicated connection (reopened on the next ``value``)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None


VACUUM_PAGES = 512


def give_back_space(
    engine: Engine,
    *,
    deadline: float | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> int:
    """Return free pages to the file system, ``VACUUM_PAGES`` per step (SQLite's incremental
    vacuum: readers never wait for a whole ``VACUUM``); the pages freed."""
    if engine.dialect.name != "sqlite":
        return 0
    freed = 0
    raw = engine.raw_connection()
    try:
        while deadline is None or monotonic() < deadline:
            free = raw.execute("PRAGMA freelist_count").fetchone()[0]
            if free == 0:
                break
            raw.execute(f"PRAGMA incremental_vacuum({VACUUM_PAGES})").fetchall()
            freed += min(free, VACUUM_PAGES)
    finally:
        raw.close()
    return freed


def database_size(conn: Connection, database: str) -> int:
    """Bytes the database takes: the SQLite file with its WAL files, or PostgreSQL's
    ``pg_database_size``."""
    if location.is_postgres(database):
        size = conn.exec_driver_sql("SELECT pg_database_size(current_database())").scalar()
        return int(size or 0)
    files = (database, f"{database}-wal", f"{database}-shm")
    return sum(os.path.getsize(f) for f in files if os.path.exists(f))


def page_counts(conn: Connection) -> dict[str, int]:
    """The file's page size, pages and free pages (what ``info`` shows); none on PostgreSQL."""
    if conn.dialect.name != "sqlite":
        return {}
    return {
        name: int(conn.exec_driver_sql(f"PRAGMA {name}").scalar() or 0)
        for name in ("page_size", "page_count", "freelist_count")
    }
