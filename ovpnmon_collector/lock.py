"""One writer per database: every ``ovpnmon-collector`` command that writes holds a lock on
``<database>.lock`` for as long as it runs (on PostgreSQL, an advisory lock: ``PostgresLock``).

A second collector beside the daemon (another ``run``, a cron ``poll-once``) would read the same
sessions and store every byte twice. The lock is ``flock()``: the kernel releases it when its
process ends in any way, SIGKILL and power loss included, so a lock file left behind never
blocks a restart. The file holds who took the lock last, for the message a second writer gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import time

from ovpnmon_common.formatting import format_timestamp
from ovpnmon_common.storage import postgres
from ovpnmon_common.storage.location import describe, is_postgres


class WriterBusy(Exception):
    """Another collector process is writing the database; the message names it."""


class WriterLock:
    """The database's writer lock, taken by ``acquire`` and given back by ``release``."""

    def __init__(self, database: str, command: str) -> None:
        self.database = database
        self.path = f"{database}.lock"
        self.command = command
        self.versions: tuple[int | None, int] = (None, 0)  # the schema's, set by the CLI
        self._fd: int | None = None

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait`` seconds for another writer to finish."""
        deadline = time.monotonic() + wait
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o640)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _holder(fd)
                os.close(fd)
                if time.monotonic() >= deadline:
                    raise WriterBusy(self._busy(holder)) from None
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
                continue
            except BaseException:
                os.close(fd)
                raise
            # The file may have been deleted (and made again by another writer) between open()
            # and flock(): then this lock guards nothing, try again on the file that is there.
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {self.command} {int(time.time())}\n".encode(), 0)
            self._fd = fd
            return

    def ensure(self) -> None:
        """Check that the lock file is still the one locked (the daemon calls it every poll).
        Someone deleted it: lock the file there now, or raise ``WriterBusy`` if another
        collector got it first (both writing would count every byte twice)."""
        if self._fd is None:
            raise RuntimeError("the writer lock is not held")
        try:
            if os.fstat(self._fd).st_ino == os.stat(self.path).st_ino:
                return
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        self.acquire()

    def release(self) -> None:
        """Give the lock back (the file stays: deleting it would race a writer opening it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _busy(self, holder: tuple[str, str, int] | None) -> str:
        who = "another ovpnmon-collector"
        if holder is not None:
            pid, command, since = holder
            who += f" (pid {pid}, '{command}', since {format_timestamp(since)} UTC)"
        if holder is None or holder[1] != "run":
            fix = "wait for it to finish" + (
                " or give --wait SECONDS" if self.command in _WAITS else ""
            )
        elif self.command in ("run", "poll-once"):
            fix = "two collectors would count every byte twice; stop the other one first"
        elif self.command == "restore":
            fix = "stop it first (systemctl stop ovpnmon-collector), restore, then start it"
        elif self.command == "copy-to":
            fix = (
                "stop it first (systemctl stop ovpnmon-collector): what it polls after the "
                "copy would be left behind"
            )
        else:
            fix = (
                "the daemon rolls up every minute and applies retention hourly by itself; "
                f"stop it first to run '{self.command}' now"
            )
        return f"{who} is writing {self.database}: {fix}"


# the commands that take --wait
_WAITS = ("init-db", "rollup", "backfill", "prune", "scan-certs", "restore", "copy-to")


def _holder(fd: int) -> tuple[str, str, int] | None:
    """Who wrote the lock file: (pid, command, epoch seconds), if it says."""
    with contextlib.suppress(OSError, ValueError):
        pid, command, since = os.pread(fd, 200, 0).decode().split()
        return pid, command, int(since)
    return None


class PostgresLock:
    """The writer lock of one host in a PostgreSQL database: a session-level advisory lock on a
    connection of its own, which the server gives back when that connection ends in any way.
    Several hosts' collectors write one database at once; two of the same host would count
    every byte twice. Its ``application_name`` says who holds it, for the message a second
    writer gets."""

    def __init__(self, database: str, command: str, host: str) -> None:
        self.database = database
        self.path = describe(database)  # for messages
        self.command = command
        self.host = host
        self.versions: tuple[int | None, int] = (None, 0)
        self._lock: postgres.AdvisoryLock | None = None
        self._taken = False  # acquired, and not released since (the connection may be lost)

    def acquire(self, wait: float = 0.0) -> None:
        """Take the lock, waiting up to ``wait`` seconds (``ConnectionError`` if the server
        cannot be reached)."""
        name = f"ovpnmon-collector {self.command} pid {os.getpid()} on {socket.gethostname()}"
        deadline = time.monotonic() + wait
        while True:
            lock = postgres.AdvisoryLock(
                self.database, f"collector {self.host}", application_name=name
            )
            if lock.try_acquire():
                self._lock, self._taken = lock, True
                return
            holder = lock.holder()
            lock.release()
            if time.monotonic() >= deadline:
                raise WriterBusy(self._busy(holder))
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def ensure(self) -> None:
        """Check that the lock is still held (the daemon calls it every poll); a lost
        connection (the server restarted) takes it again, or raises ``WriterBusy``. While the
        server cannot be reached, nobody writes through it: it is taken again next time."""
        if not self._taken:
            raise RuntimeError("the writer lock is not held")
        if self._lock is not None and self._lock.alive():
            return
        self.release()
        self._taken = True
        with contextlib.suppress(ConnectionError):
            self.acquire()

    def release(self) -> None:
        self._taken = False
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _busy(self, holder: str | None) -> str:
        who = f"another writer ({holder})" if holder else "another ovpnmon-collector"
        return (
            f"{who} holds the writer lock of host {self.host} in {self.path}: two collectors "
            "of one host would count every byte twice; stop the other one first (or give "
            "each VPN host its own [collector] host)"
            + (" or give --wait SECONDS" if self.command in _WAITS else "")
        )


def writer_lock(database: str, command: str, host: str) -> WriterLock | PostgresLock:
    """The writer lock for ``database``: a lock file beside a SQLite file (one host), an
    advisory lock of host ``host`` on PostgreSQL."""
    if is_postgres(database):
        return PostgresLock(database, command, host)
    return WriterLock(database, command)
