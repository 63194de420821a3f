"""``backup`` and ``restore``: a consistent copy of the database while the collector runs, and
putting one back while it does not.

A backup is ``VACUUM INTO`` from a read-only connection: one read transaction, so the copy is the
database as one commit left it, whatever the collector does meanwhile; compact; and in
rollback-journal mode, so it opens read-only as it is (a WAL-mode copy cannot be read by a user
who may not write beside it). It is written beside its destination and renamed into place.

A restore checks the file (integrity, schema) as a private copy beside the database, keeps the
database it replaces (with its WAL files, which belong to it: left behind, SQLite would play the
old WAL onto the new file), gives the new file the old one's owner and mode, and upgrades its
schema if it is older. The CLI holds the writer lock throughout, so no collector writes meanwhile;
the API follows the file by itself.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import sqlite3
from dataclasses import dataclass

from ovpnmon_common import schema
from ovpnmon_common.storage.engines import reader_uri


class BackupError(Exception):
    """A backup or restore that cannot be done; the message says why and what to do."""


@dataclass(frozen=True)
class Facts:
    """What a database holds, to say what was copied."""

    size: int
    schema_version: int
    clients: int
    last_poll: int | None


def _stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def backup(
    database: str, destination: str, *, force: bool = False, keep: int | None = None
) -> tuple[str, Facts]:
    """Copy ``database`` to ``destination`` (a file, or a directory to name one in); returns
    the file written and what it holds. With ``keep`` (a directory only), the oldest dated
    backups there beyond that many are deleted afterwards."""
    into = destination if os.path.isdir(destination) else None
    if keep is not None and into is None:
        raise BackupError(f"--keep needs a directory to keep backups in; {destination} is not one")
    if os.path.isdir(destination):
        stamp = _stamp()
        named = os.path.join(destination, f"ovpnmon-{stamp}.db")
        tries = 1
        while os.path.exists(named):  # several in one second
            named = os.path.join(destination, f"ovpnmon-{stamp}-{tries}.db")
            tries += 1
        destination = named
    if os.path.exists(destination) and not force:
        raise BackupError(f"{destination} exists: give a new name, or --force to replace it")
    if not os.path.exists(database):
        raise BackupError(f"{database} does not exist: nothing to back up")
    partial = f"{destination}.partial-{os.getpid()}"
    try:
        # mode=ro, and no query_only: VACUUM INTO writes only its own file
        source = sqlite3.connect(reader_uri(database), uri=True, isolation_level=None)
        try:
            source.execute("VACUUM INTO ?", (partial,))
        finally:
            source.close()
        facts = _facts(partial)
        _fsync(partial)
        os.replace(partial, destination)
        _fsync(os.path.dirname(os.path.abspath(destination)))
    except sqlite3.Error as exc:
        raise BackupError(f"cannot back up {database}: {exc}") from None
    except OSError as exc:
        raise BackupError(f"cannot write {destination}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    if into is not None and keep is not None:
        _keep_newest(into, keep)
    return destination, facts


def _keep_newest(directory: str, keep: int) -> None:
    """Delete the dated backups (``ovpnmon-<time>.db``, the names ``backup`` gives) beyond the
    newest ``keep``; nothing else in the directory is touched."""
    dated = sorted(
        name
        for name in os.listdir(directory)
        if name.startswith("ovpnmon-") and name.endswith(".db") and name[8:9].isdigit()
    )
    for name in dated[: max(0, len(dated) - keep)]:
        os.unlink(os.path.join(directory, name))


def restore(database: str, source: str) -> tuple[Facts, str | None]:
    """Put the backup ``source`` in place of ``database``; returns what it holds and where the
    database it replaced is kept (None if there was none). The caller holds the writer lock."""
    if not os.path.isfile(source):
        raise BackupError(f"{source} is not a file")
    directory = os.path.dirname(os.path.abspath(database))
    candidate = os.path.join(directory, f".{os.path.basename(database)}.restore-{os.getpid()}")
    try:
        shutil.copyfile(source, candidate)
        facts = _checked(candidate, source)
        _fsync(candidate)
        kept = _set_aside(database)
        _like(candidate, kept or directory)
        os.replace(candidate, database)
        _fsync(directory)
    except OSError as exc:
        raise BackupError(f"cannot restore into {database}: {exc.strerror or exc}") from None
    finally:
        if os.path.exists(candidate):
            os.unlink(candidate)
    return facts, kept


def _checked(path: str, named: str) -> Facts:
    """Integrity and schema of the candidate; in rollback-journal mode afterwards."""
    try:
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA journal_mode=DELETE")
            problems = [row[0] for row in conn.execute("PRAGMA integrity_check(5)")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if "not a database" in str(exc):
            raise BackupError(f"{named} is not an ovpnmon database: {exc}") from None
        raise BackupError(f"{named} is damaged (integrity check: {exc})") from None
    if problems != ["ok"]:
        raise BackupError(f"{named} is damaged (integrity check: {'; '.join(problems)})")
    facts = _facts(path)
    if facts.schema_version > schema.SCHEMA_VERSION:
        raise BackupError(
            f"{named} has schema version {facts.schema_version}, newer than this ovpnmon "
            f"understands ({schema.SCHEMA_VERSION}): upgrade ovpnmon first"
        )
    return facts


def _facts(path: str) -> Facts:
    try:
        conn = sqlite3.connect(reader_uri(path), uri=True)
        try:
            version = conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            clients = conn.execute("SELECT count(*) FROM clients").fetchone()[0]
            tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
            heartbeat = conn.execute(
                "SELECT max(heartbeat) FROM hosts"
                if "hosts" in tables  # schema 4; before, one collector's key in meta
                else "SELECT value FROM meta WHERE key = 'collector.heartbeat'"
            ).fetchone()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        raise BackupError(f"{path} is not an ovpnmon database: {exc}") from None
    if version is None:
        raise BackupError(f"{path} is not an ovpnmon database: it has no schema version")
    return Facts(
        size=os.path.getsize(path),
        schema_version=int(version[0]),
        clients=int(clients),
        last_poll=int(heartbeat[0]) if heartbeat and heartbeat[0] is not None else None,
    )


def _set_aside(database: str) -> str | None:
    """Rename the database (and its WAL files with it) to ``<database>.replaced-<time>``."""
    if not os.path.exists(database):
        return None
    kept = f"{database}.replaced-{_stamp()}"
    for suffix in ("-wal", "-shm", ""):  # the file last: it is what says "kept"
        if os.path.exists(database + suffix):
            os.replace(database + suffix, kept + suffix)
    return kept


def _like(path: str, model: str) -> None:
    """Give ``path`` the owner, group and mode of ``model`` (the replaced database, or the
    database's directory): a restore run as root must leave a file the collector can write."""
    info = os.stat(model)
    if os.geteuid() == 0:
        os.chown(path, info.st_uid, info.st_gid)
    mode = info.st_mode & 0o666 if os.path.isfile(model) else 0o640
    os.chmod(path, mode)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
