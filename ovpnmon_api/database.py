"""The collector's database as the API reads it: read-only, and following the file.

The API's pooled connections hold the file they opened. A database replaced under them (a restore,
an ``mv``) would go on being served from the old inode, and a deleted one from memory, with
``/health`` saying all is well. So every request first looks at the path (one ``stat``): a new
file is opened afresh (the pool is dropped), a missing or unreadable one is a ``DatabaseError``
(503, ``/health`` unhealthy) until it is back, and the schema is checked once per state of the
database. The API starts without the file and serves as soon as the collector creates it.

Every request reads in one transaction (``snapshot``) that starts with the collectors' status.
On PostgreSQL a pooled connection may have been dropped by the server (a restart, a terminated
backend); its first statement fails, SQLAlchemy empties the pool, and the read is tried once more
on a new connection: what a ping on every checkout would do, without its round trip.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
from collections.abc import Hashable, Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DBAPIError

from ovpnmon_common import meta
from ovpnmon_common.meta import CollectorStatus
from ovpnmon_common.storage import DatabaseError
from ovpnmon_common.storage.engines import change_counter, reader_engine
from ovpnmon_common.storage.location import describe, is_postgres
from ovpnmon_common.storage.migrations import check_schema

log = logging.getLogger("ovpnmon.api")


class FollowedDatabase:
    """The read-only engine on ``path`` and the counter that moves with every commit."""

    def __init__(self, path: str, *, pool_size: int = 8, engine: Engine | None = None) -> None:
        self.path = path
        self.engine = engine or reader_engine(path, pool_size=pool_size)
        self.counter = change_counter(path)
        self._lock = threading.Lock()
        self._file: tuple[int, int] | None = None  # the file the pool's connections are on
        self._checked: Hashable = None  # the database state whose schema was checked

    def check(self) -> Hashable:
        """The database's state (its change counter's value). Raises ``DatabaseError`` unless
        the file is there, readable and of our schema; reopens on a file that replaced the one
        the connections hold."""
        if not is_postgres(self.path):
            self._follow_file()
        try:
            version = self.counter.value()
        except (OSError, sqlite3.Error) as exc:
            raise DatabaseError(f"cannot read {describe(self.path)}: {exc}") from None
        if version != self._checked:
            check_schema(self.engine, self.path)
            self._checked = version
        return version

    @contextmanager
    def snapshot(self) -> Iterator[tuple[Connection, CollectorStatus]]:
        """One read transaction and the collectors' status in it: every query of a request
        sees the same committed state (call ``check`` first)."""
        for attempt in (1, 2):
            conn = self.engine.connect()
            try:
                status = meta.read_status(conn)
            except DBAPIError as exc:
                conn.close()
                if exc.connection_invalidated and attempt == 1:
                    continue  # dropped by the server while pooled: the pool is emptied
                raise
            with conn:
                yield conn, status
                # Ended by COMMIT, not the pool's ROLLBACK: psycopg forgets the statements it
                # prepared on the server at every ROLLBACK, and PostgreSQL would plan each
                # statement of every request afresh (a third of a cold request's time).
                conn.commit()
            return

    def _follow_file(self) -> None:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            raise DatabaseError(
                f"{self.path} does not exist (yet): the collector creates it; is "
                "ovpnmon-collector running?"
            ) from None
        except OSError as exc:
            raise DatabaseError(f"cannot read {self.path}: {exc.strerror}") from None
        if not os.access(self.path, os.R_OK):
            raise DatabaseError(
                f"cannot read {self.path}: permission denied (the API's user must be in the "
                "database's group: see docs/deploy.md)"
            )
        file = (info.st_dev, info.st_ino)
        if file != self._file:
            with self._lock:
                if file != self._file:
                    if self._file is not None:
                        log.info("database %s is a new file: reading that one", self.path)
                    self.engine.dispose()  # connections on the old file go; new ones open this
                    self._file = file
                    self._checked = None

    def dispose(self) -> None:
        """Close the pool and the change counter's connection."""
        self.counter.close()
        self.engine.dispose()
