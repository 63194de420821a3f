"""PostgreSQL's specifics, all in one place: the writer's and the reader's engines, how a reader
learns that something was committed, and the writer lock.

- **Writer**: psycopg 3, READ COMMITTED. Every transaction starts with ``NOTIFY ovpnmon_changes``:
  PostgreSQL delivers a notification only when its transaction commits, and only after the
  commit is visible, which is exactly the signal a reader's response cache needs.
- **Reader** (the API, ``info``, ``backup``'s checks): every transaction READ ONLY (the server
  refuses a write in it, whatever the role may do) and REPEATABLE READ, so the several SELECTs of
  one request see one snapshot, as SQLite's deferred ``BEGIN`` does.
- **Change counter**: one connection per reader that ``LISTEN``\\ s; its value moves with each
  notification and with every reconnection (notifications sent while it was away are lost).
- **Writer lock**: a session-level advisory lock held by the collector's process (released by the
  server when the connection ends in any way, as ``flock`` is by the kernel).

psycopg is imported only here, and only when a PostgreSQL URL is used (the ``[postgresql]``
extra).
"""

from __future__ import annotations

import threading
import zlib
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event

from ovpnmon_common.storage.location import describe, postgres_url

CHANNEL = "ovpnmon_changes"
CONNECT_TIMEOUT = 10  # seconds: an unreachable server is an error, not a hang


def _engine(database: str, pool_size: int, pre_ping: bool = True, **kwargs: Any) -> Engine:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise ImportError("PostgreSQL needs psycopg 3: pip install 'ovpnmon[postgresql]'") from None
    connect_args = {"connect_timeout": CONNECT_TIMEOUT, **kwargs.pop("connect_args", {})}
    return create_engine(
        postgres_url(database),
        pool_size=pool_size,
        pool_pre_ping=pre_ping,  # a server restarted under the pool: reconnect, not fail once
        connect_args=connect_args,
        **kwargs,
    )


def writer_engine(database: str, *, lock_timeout_ms: int = 5000) -> Engine:
    """The collector's engine: each transaction notifies readers when it commits; a statement
    that waits longer than ``lock_timeout_ms`` for a lock fails (as SQLite's busy timeout does)
    rather than hold up the poll."""
    engine = _engine(
        database, 2, connect_args={"options": f"-c lock_timeout={int(lock_timeout_ms)}"}
    )

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        connection.exec_driver_sql(f"NOTIFY {CHANNEL}")

    return engine


def reader_engine(database: str, *, pool_size: int = 8) -> Engine:
    """The API's engine: read-only, one snapshot per transaction. No ping on checkout (a round
    trip on every request): the reader retries its first statement once on a connection the
    server dropped (``FollowedDatabase.snapshot``)."""
    return _engine(
        database,
        pool_size,
        pre_ping=False,
        isolation_level="REPEATABLE READ",
        connect_args={"options": "-c default_transaction_read_only=on"},
    ).execution_options(postgresql_readonly=True)


class NotifyCounter:
    """``ChangeCounter`` for PostgreSQL: a value that moves whenever a writer commits.

    PostgreSQL hands a listening session the notifications committed before each of its
    queries returns, so one ``SELECT 1`` (a round trip, ≈ 0.2 ms on the same host) makes sure
    every commit that finished before ``value()`` was called is counted: a body is never kept
    for a state older than the one the request could read."""

    def __init__(self, database: str) -> None:
        self.database = database
        self._lock = threading.Lock()
        self._conn: Any = None
        self._generation = 0
        self._seen = 0

    def value(self) -> tuple[int, int]:
        """Raises ``ConnectionError`` (an ``OSError``) when the server cannot be reached."""
        import psycopg

        with self._lock:
            for attempt in (1, 2):  # a connection lost since the last call: once more, afresh
                fresh = self._conn is None or self._conn.closed
                try:
                    if fresh:
                        self._connect()
                    self._conn.execute("SELECT 1")
                    return (self._generation, self._seen)
                except psycopg.Error as exc:
                    self.close()
                    if fresh or attempt == 2:  # the caller names the database
                        raise ConnectionError(one_line(exc)) from None
            raise AssertionError("unreachable")

    def _count(self, _notification: Any) -> None:
        self._seen += 1

    def _connect(self) -> None:
        self._conn = connect(self.database, "ovpnmon change counter")
        self._conn.add_notify_handler(self._count)
        self._conn.execute(f"LISTEN {CHANNEL}")
        self._generation += 1  # whatever was committed while not listening is unknown

    def close(self) -> None:
        """Close the listening connection (reopened on the next ``value``)."""
        conn, self._conn = self._conn, None
        _close(conn)


def connect(database: str, application_name: str) -> Any:
    """A psycopg connection of its own (autocommit) to ``database``."""
    import psycopg

    url = postgres_url(database).set(drivername="postgresql")
    return psycopg.connect(
        url.render_as_string(hide_password=False),
        autocommit=True,
        connect_timeout=CONNECT_TIMEOUT,
        application_name=application_name[:63],
    )


def _close(conn: Any) -> None:
    """Close a connection of our own, if there is one (its holder has already let go of it)."""
    if conn is not None:
        conn.close()


def one_line(exc: BaseException) -> str:
    """An error's text on one line (libpq's connection errors take two)."""
    return " ".join(str(exc).split())


def lock_key(name: str) -> int:
    """The advisory lock's key for ``name`` (a signed 64-bit integer, stable across versions)."""
    return zlib.crc32(f"ovpnmon writer {name}".encode())


# Transaction-level advisory locks between the writers of one database (several collectors):
# polls hold TIERS shared, rollup and retention hold it alone (``engines.hold_tiers``);
# creating or upgrading the schema holds SCHEMA.
TIERS = lock_key("tiers")
SCHEMA = lock_key("schema")


def hold(conn: Connection, key: int, *, shared: bool = False) -> None:
    """Take the transaction-level advisory lock ``key`` (waits; ``lock_timeout`` applies)."""
    kind = "pg_advisory_xact_lock_shared" if shared else "pg_advisory_xact_lock"
    conn.exec_driver_sql(f"SELECT {kind}({int(key)})")


def next_ids(conn: Connection, table: str, count: int) -> list[int]:
    """``count`` new ids of ``table`` from its sequence: unique whoever else takes some."""
    return list(
        conn.exec_driver_sql(
            f"SELECT nextval(pg_get_serial_sequence('{table}', 'id')) "
            f"FROM generate_series(1, {int(count)})"
        ).scalars()
    )


def advance_sequences(conn: Connection, tables: tuple[str, ...]) -> None:
    """Move each table's id sequence past its highest id (rows written with ids of their own:
    an upgrade, a copy), never back: ``nextval`` hands out no value twice."""
    for table in tables:
        sequence = f"pg_get_serial_sequence('{table}', 'id')"
        conn.exec_driver_sql(
            f"SELECT setval({sequence}, GREATEST((SELECT coalesce(max(id), 0) FROM {table}), "
            f"nextval({sequence})))"
        )


class AdvisoryLock:
    """A session-level advisory lock on its own connection: held until ``release`` or until the
    connection ends (a collector killed in any way gives it back)."""

    def __init__(self, database: str, name: str, application_name: str = "ovpnmon") -> None:
        self.database = database
        self.key = lock_key(name)
        self.application_name = application_name
        self._conn: Any = None

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it (raises ``ConnectionError`` if unreachable)."""
        row = self._query("SELECT pg_try_advisory_lock(%s)", (self.key,))
        return bool(row and row[0])

    def holder(self) -> str | None:
        """Who holds the lock: its holder's application name and address, if visible."""
        row = self._query(
            "SELECT a.application_name, a.client_addr FROM pg_locks l "
            "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' "
            "AND l.granted AND (l.classid::bigint << 32 | l.objid::bigint) = %s",
            (self.key,),
        )
        if not row:
            return None
        name, address = row
        return f"{name} from {address}" if address else str(name)

    def alive(self) -> bool:
        """True while the connection holding the lock is up."""
        try:
            return self._query("SELECT 1", ()) is not None
        except ConnectionError:
            return False

    def _query(self, sql: str, params: tuple[Any, ...]) -> Any:
        import psycopg

        try:
            if self._conn is None:
                self._conn = connect(self.database, self.application_name)
            return self._conn.execute(sql, params).fetchone()
        except psycopg.Error as exc:
            self.release()
            raise ConnectionError(f"{describe(self.database)}: {one_line(exc)}") from None

    def release(self) -> None:
        """Give the lock back (by closing its connection)."""
        conn, self._conn = self._conn, None
        _close(conn)
