"""``ovpnmon-collector copy-to URL``: a whole history, exactly, into another database — a
SQLite file into PostgreSQL when a host moves to it.

Every table is copied as it is, keys included, from one read snapshot of the source (consistent
even while a collector writes it), in key order and in batches of ``BATCH`` rows, each batch an
upsert by primary key in a transaction of its own: a copy that stopped half-way is finished by
running it again, and a copy run twice leaves the same rows, never two. ``meta`` comes last
(schema version, watermarks, how far prune went, when each source was first watched), so the
target says it is complete only once everything else is in it. A target that holds another
history (a client id naming another common name, a session key on another id) is refused before
anything is written. Afterwards the rows and byte sums of every table are compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, Table, func, select

from ovpnmon_common import schema
from ovpnmon_common.storage import postgres, statements

BATCH = 10_000

# the last table copied: it says what the rest holds
_LAST = schema.meta.name


class CopyError(Exception):
    """The target cannot take this history; the message says why."""


@dataclass
class TableCopy:
    """What one table holds in the source and, after the copy, in the target."""

    name: str
    rows: int = 0
    target_rows: int = 0
    sums: tuple[int, ...] = ()
    target_sums: tuple[int, ...] = ()

    @property
    def equal(self) -> bool:
        return self.rows == self.target_rows and self.sums == self.target_sums


@dataclass
class CopyReport:
    tables: list[TableCopy] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


def _tables() -> list[Table]:
    ordered = [t for t in schema.metadata.sorted_tables if t.name != _LAST]
    return [*ordered, schema.meta]


def _byte_columns(table: Table) -> list[str]:
    return [c.name for c in table.columns if c.name.startswith(("bytes_", "closed_"))]


def _facts(conn: Connection, table: Table) -> tuple[int, tuple[int, ...]]:
    columns = _byte_columns(table)
    row = conn.execute(
        select(func.count(), *(statements.total(table.c[c]) for c in columns)).select_from(table)
    ).one()
    return int(row[0]), tuple(int(v or 0) for v in row[1:])


def _check_same_history(source: Connection, target: Connection) -> None:
    """Refuse a target whose clients or sessions are not the source's under the same ids."""
    c, s = schema.clients, schema.sessions
    theirs = dict(target.execute(select(c.c.id, c.c.common_name)).all())
    if theirs:
        ours = dict(source.execute(select(c.c.id, c.c.common_name)).all())
        for cid, name in theirs.items():
            if ours.get(cid, name) != name:
                raise CopyError(
                    f"the target holds another history: its client {cid} is {name!r}, the "
                    f"source's is {ours[cid]!r}; copy into an empty database"
                )
    key = (s.c.source, s.c.session_key, s.c.connected_since)
    theirs_sessions = {tuple(r[1:]): r[0] for r in target.execute(select(s.c.id, *key)).all()}
    if theirs_sessions:
        for row in source.execute(select(s.c.id, *key)):
            found = theirs_sessions.get(tuple(row[1:]))
            if found is not None and found != row[0]:
                raise CopyError(
                    f"the target holds another history: session {tuple(row[1:])} is its "
                    f"{found}, the source's {row[0]}; copy into an empty database"
                )


def _batches(conn: Connection, table: Table) -> Iterator[list[tuple]]:
    keys = list(table.primary_key.columns)
    result = conn.execution_options(yield_per=BATCH).execute(select(table).order_by(*keys))
    for part in result.partitions(BATCH):
        yield [tuple(row) for row in part]


def copy(
    source: Engine, target: Engine, progress: Callable[[str, int], None] = lambda t, n: None
) -> CopyReport:
    """Copy every table of ``source`` into ``target`` (its schema already made, at the same
    version); ``progress(table, rows so far)`` after each batch. Raises ``CopyError`` for a
    target holding another history."""
    report = CopyReport()
    with source.connect() as read:  # one snapshot of the source for the whole copy
        with target.connect() as check:
            _check_same_history(read, check)
        for table in _tables():
            columns = tuple(c.name for c in table.columns)
            keys = [c.name for c in table.primary_key.columns]
            done = 0
            for rows in _batches(read, table):
                with target.begin() as write:
                    statements.upsert_tuples(write, table, columns, rows, keys)
                done += len(rows)
                progress(table.name, done)
            entry = TableCopy(table.name)
            entry.rows, entry.sums = _facts(read, table)
            with target.connect() as check:
                entry.target_rows, entry.target_sums = _facts(check, table)
            report.tables.append(entry)
    if target.dialect.name == "postgresql":
        # the copied rows kept their ids: the collectors that write there next take theirs
        # from the sequences, which must start after them
        with target.begin() as write:
            postgres.advance_sequences(write, ("hosts", "clients", "sessions"))
    return report
