"""Creating, checking and upgrading the schema: ``init_db`` is idempotent, ``check_schema``
tells a reader (the API, ``info``) in one sentence what is wrong and what to run.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    MetaData,
    Table,
    UniqueConstraint,
    func,
    inspect,
    literal_column,
    select,
)
from sqlalchemy.exc import DBAPIError
from sqlalchemy.schema import CreateTable

from ovpnmon_common import meta, schema
from ovpnmon_common.config import default_host
from ovpnmon_common.storage import DatabaseError, describe_error, postgres
from ovpnmon_common.storage.location import describe
from ovpnmon_common.tiers import TIERS, built_on


def schema_version(conn: Connection) -> int | None:
    """The stored schema version, or None for a database ovpnmon never initialised."""
    if not inspect(conn).has_table(schema.meta.name):
        return None
    value = meta.get(conn, meta.SCHEMA_VERSION)
    return int(value) if value is not None else None


def _to_version_2(conn: Connection) -> None:
    """1 -> 2: open sessions' counters move to one packed row per source, open sessions get a
    partial index instead of an index on every session's disconnection time, and raw samples are
    keyed time first. No counter to convert: a session without an entry in session_counters keeps
    the counters its ``sessions`` row holds, which is where version 1 kept them. The raw samples
    are copied into the new key (seconds per million rows)."""
    schema.session_counters.create(conn)
    _open_sessions_index(conn, "client_id", "connected_since")
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


def _to_version_3(conn: Connection) -> None:
    """2 -> 3: an index on sessions' Connected Since, for the connection log (newest first); and
    how far each tier was pruned, which version 2 did not record (``_record_pruned``)."""
    next(i for i in schema.sessions.indexes if i.name == "ix_sessions_connected_since").create(conn)
    _record_pruned(conn)


def _record_pruned(conn: Connection) -> None:
    """Write ``prune.<tier>.before`` for the tiers an older ovpnmon pruned without saying so.

    A tier has lost rows where a tier built from it (directly or not) holds a whole bucket
    before the tier's oldest row: that bucket was summed from rows no longer there. The tier
    then counts as deleted before its oldest row (all of it, if it is empty: up to the end of
    the newest such bucket). A tier with no such evidence gets no key: nothing was deleted that
    anything still shows. Without this, ``/usage`` would take a pruned tier as holding an edge
    until the collector's first prune, and undercount."""
    oldest: dict[str, int | None] = {}
    newest: dict[str, int | None] = {}
    for tier in TIERS:
        first, last = conn.execute(select(func.min(tier.time), func.max(tier.time))).one()
        oldest[tier.name], newest[tier.name] = first, last

    for tier in TIERS:
        coarser = []  # the tiers built from it, directly or not, that hold rows
        above = built_on(tier)
        while above is not None:
            if oldest[above.name] is not None:
                coarser.append(above)
            above = built_on(above)
        ends = [int(oldest[c.name] or 0) + int(c.width or 0) for c in coarser]
        held = oldest[tier.name]
        if not ends or (held is not None and min(ends) > held):
            continue  # no bucket before the tier's oldest row: nothing is known deleted
        before = (
            held
            if held is not None
            else max(int(newest[c.name] or 0) + int(c.width or 0) for c in coarser)
        )
        meta.put(conn, meta.pruned_key(tier.name), str(before))


# The tables that gained ``host_id`` in schema 4, with the constraints it joined.
_HOSTED = (
    schema.clients,
    schema.sessions,
    schema.session_counters,
    schema.global_history,
    schema.global_15min,
    schema.certificates,
)
# meta keys of schema 3 that became columns of ``hosts`` and ``sources``
_V3_HEARTBEAT = "collector.heartbeat"
_V3_INTERVAL = "collector.interval"
_V3_POLL_SECONDS = "collector.poll_seconds"
_V3_CLOSED_SINCE = "collector.closed_since"
_V3_CERTIFICATES = "certificates.scanned_at"


def _to_version_4(conn: Connection, host: str) -> None:
    """3 -> 4: hosts. Everything already stored is the history of one collector, which becomes
    host 1 named ``host`` (the upgrading collector's ``[collector] host``): what ``meta`` said
    of it and of its sources moves into ``hosts`` and ``sources``, and the tables keyed by what
    one collector sees gain ``host_id`` in their keys (``_add_host_id``). Raw samples and the
    per-client tiers do not change: their ``client_id`` is a common name on one host."""
    schema.hosts.create(conn)
    schema.sources.create(conn)
    entries = dict(conn.execute(select(schema.meta.c.key, schema.meta.c.value)).all())
    for table in _HOSTED:
        _add_host_id(conn, table)
    c = schema.clients
    first_seen = conn.execute(select(func.min(c.c.first_seen))).scalar()
    heartbeat = entries.get(_V3_HEARTBEAT)
    if first_seen is None and heartbeat is None:
        return  # never polled: the first collector to poll registers itself
    conn.execute(
        schema.hosts.insert().values(
            id=1,
            name=host,
            first_seen=int(first_seen if first_seen is not None else heartbeat or 0),
            heartbeat=int(heartbeat) if heartbeat else None,
            interval=int(entries[_V3_INTERVAL]) if entries.get(_V3_INTERVAL) else None,
            poll_seconds=float(entries[_V3_POLL_SECONDS])
            if entries.get(_V3_POLL_SECONDS)
            else None,
            certificates_scanned_at=int(entries[_V3_CERTIFICATES])
            if entries.get(_V3_CERTIFICATES)
            else None,
        )
    )
    if conn.dialect.name == "postgresql":
        # ids written by hand until now (one collector took max(id) + 1): several collectors
        # take them from the sequences from here on
        postgres.advance_sequences(conn, ("hosts", "clients", "sessions"))
    sources: dict[str, dict[str, Any]] = {}
    for key, value in entries.items():
        kind, _, rest = key.partition(".")
        name, _, what = rest.rpartition(".")
        if kind == "source" and what == "health":
            sources.setdefault(name, {})["health"] = value
        elif kind == "source" and what == "first_watched":
            sources.setdefault(name, {})["first_watched"] = int(value)
    for name, since in json.loads(entries.get(_V3_CLOSED_SINCE) or "{}").items():
        sources.setdefault(name, {})["closed_since"] = int(since)
    if sources:
        conn.execute(
            schema.sources.insert(),
            [
                {
                    "host_id": 1,
                    "name": name,
                    "first_watched": found.get("first_watched"),
                    "health": found.get("health"),
                    "closed_since": found.get("closed_since"),
                }
                for name, found in sorted(sources.items())
            ],
        )
    moved = [k for k in entries if k.startswith("source.")]
    moved += [_V3_HEARTBEAT, _V3_INTERVAL, _V3_POLL_SECONDS, _V3_CLOSED_SINCE, _V3_CERTIFICATES]
    meta.delete(conn, moved)


def _add_host_id(conn: Connection, table: Table) -> None:
    """Give ``table`` its schema-4 ``host_id`` column (1 in every row) and the keys that hold it.

    PostgreSQL alters the table in place. SQLite cannot change a table's keys, so it builds the
    new table beside the old one, copies the rows and swaps them (foreign keys are off meanwhile:
    ``init_db``)."""
    if conn.dialect.name == "postgresql":
        name = table.name
        conn.exec_driver_sql(f"ALTER TABLE {name} ADD COLUMN host_id INTEGER NOT NULL DEFAULT 1")
        conn.exec_driver_sql(f"ALTER TABLE {name} ALTER COLUMN host_id DROP DEFAULT")
        old = inspect(conn)
        # the keys that gain host_id: a primary key only where it holds it (clients' and
        # sessions' ids stay, and the foreign keys on them)
        rekeyed = "host_id" in table.primary_key.columns
        dropped = [u["name"] for u in old.get_unique_constraints(name)]
        if rekeyed:
            dropped.append(old.get_pk_constraint(name)["name"])
        for constraint in dropped:
            conn.exec_driver_sql(f'ALTER TABLE {name} DROP CONSTRAINT "{constraint}"')
        # Plain SQL, not AddConstraint: that marks the schema's own constraint as created apart,
        # and every CREATE TABLE of this process would leave it out afterwards.
        for key in table.constraints:
            if isinstance(key, UniqueConstraint) or (key is table.primary_key and rekeyed):
                kind = "UNIQUE" if isinstance(key, UniqueConstraint) else "PRIMARY KEY"
                held = ", ".join(col.name for col in key.columns)
                conn.exec_driver_sql(
                    f"ALTER TABLE {name} ADD CONSTRAINT {key.name} {kind} ({held})"
                )
        for index in table.indexes:
            if "host_id" in index.columns:
                index.create(conn)
        return
    new = f"{table.name}_v4"
    ddl = str(CreateTable(table).compile(dialect=conn.dialect)).strip()
    prefix = f"CREATE TABLE {table.name} ("
    assert ddl.startswith(prefix), ddl
    conn.exec_driver_sql(f"CREATE TABLE {new} (" + ddl[len(prefix) :])
    columns = [col.name for col in table.columns]
    copied = ", ".join("1" if col == "host_id" else col for col in columns)
    conn.exec_driver_sql(
        f"INSERT INTO {new} ({', '.join(columns)}) SELECT {copied} FROM {table.name}"
    )
    conn.exec_driver_sql(f"DROP TABLE {table.name}")
    conn.exec_driver_sql(f"ALTER TABLE {new} RENAME TO {table.name}")
    for index in table.indexes:
        index.create(conn)


def _to_version_5(conn: Connection) -> None:
    """4 -> 5: ``usage_packed``, closed buckets' raw samples packed. Nothing is converted here:
    the daemon's packing job packs the raw rows of every final bucket, a slice at a time."""
    schema.usage_packed.create(conn)


def _to_version_6(conn: Connection) -> None:
    """5 -> 6: the per-client tiers' ``(bucket)`` index becomes ``(bucket, client_id,
    bytes_received, bytes_sent)``, so that every client's sums over a few buckets are read from
    the index alone."""
    for table in (tier.table for tier in TIERS if tier.per_client and not tier.raw):
        conn.exec_driver_sql(f"DROP INDEX IF EXISTS ix_{table.name}_bucket")
        for index in table.indexes:
            index.create(conn, checkfirst=True)


def _to_version_7(conn: Connection) -> None:
    """6 -> 7: the open sessions' partial index ``(client_id, connected_since)`` becomes
    ``(client_id, disconnected_at, connected_since)``. Without statistics SQLite's planner took
    the index of every session for one client's open sessions, and read all of them (1.9 ms
    for a client with a year of sessions, against 0.1 through the partial index)."""
    _open_sessions_index(conn, "client_id", "disconnected_at", "connected_since")


def _to_version_8(conn: Connection) -> None:
    """7 -> 8: ``stats_monthly``, each client's calendar months, summed from its days and kept
    so by triggers on ``stats_daily``."""
    schema.stats_monthly.create(conn, checkfirst=True)
    for statement in schema.monthly_triggers(conn.dialect.name):
        conn.exec_driver_sql(statement)
    # the days there are, by the triggers' own rule: one statement, each month summed once
    # (over whatever a half-done upgrade left)
    conn.execute(schema.stats_monthly.delete())
    d = schema.stats_daily
    month: ColumnElement[int] = literal_column(schema.month_of(conn.dialect.name, "stats_daily"))
    conn.execute(
        schema.stats_monthly.insert().from_select(
            ["client_id", "bucket", "bytes_received", "bytes_sent", "samples"],
            select(
                d.c.client_id,
                month,
                func.sum(d.c.bytes_received),
                func.sum(d.c.bytes_sent),
                func.sum(d.c.samples),
            ).group_by(d.c.client_id, month),
        )
    )


def _to_version_9(conn: Connection) -> None:
    """8 -> 9: the open sessions' partial index also holds the columns lifetime totals read
    of every open session, so that they are read from it alone (15 -> 10 ms for 8,300 open
    sessions among 3.5 million)."""
    _open_sessions_index(
        conn,
        "client_id",
        "disconnected_at",
        "connected_since",
        "host_id",
        "source",
        "bytes_received",
        "bytes_sent",
        "baseline_received",
        "baseline_sent",
    )


def _open_sessions_index(conn: Connection, *columns: str) -> None:
    """``ix_sessions_open`` (re)built over ``columns``, as the version an upgrade step leads to
    has it: each step names its own, for the columns a later schema adds do not exist yet."""
    conn.exec_driver_sql("DROP INDEX IF EXISTS ix_sessions_open")
    conn.exec_driver_sql(
        f"CREATE INDEX ix_sessions_open ON sessions ({', '.join(columns)}) "
        "WHERE disconnected_at IS NULL"
    )


def _to_version_10(conn: Connection) -> None:
    """9 -> 10: ``stats_15min_open``, the 15-minute tier's bucket in progress in a table of its
    own: its rows (at and after the tier's watermark) move there from ``stats_15min``."""
    schema.stats_15min_open.create(conn, checkfirst=True)
    q, o = schema.stats_15min, schema.stats_15min_open
    mark = meta.get(conn, meta.watermark_key("quarter_hour"))
    if mark is None:
        return
    columns = ["client_id", "bucket", "bytes_received", "bytes_sent", "samples"]
    conn.execute(o.delete())  # over whatever a half-done upgrade left
    conn.execute(
        o.insert().from_select(
            columns, select(*(q.c[name] for name in columns)).where(q.c.bucket >= int(mark))
        )
    )
    conn.execute(q.delete().where(q.c.bucket >= int(mark)))


# from-version -> function upgrading to from-version + 1 (given the connection and the host
# name that history before schema 4 is filed under)
MIGRATIONS: dict[int, Any] = {
    1: lambda conn, host: _to_version_2(conn),
    2: lambda conn, host: _to_version_3(conn),
    3: _to_version_4,
    4: lambda conn, host: _to_version_5(conn),
    5: lambda conn, host: _to_version_6(conn),
    6: lambda conn, host: _to_version_7(conn),
    7: lambda conn, host: _to_version_8(conn),
    8: lambda conn, host: _to_version_9(conn),
    9: lambda conn, host: _to_version_10(conn),
}


def init_db(engine: Engine, host: str | None = None) -> tuple[int | None, int]:
    """Create or upgrade the schema; idempotent. Returns (version before, version after).

    ``host``: the name an upgrade to schema 4 files the history of the one collector there was
    under (default: this machine's host name, as ``[collector] host``)."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            # Rebuilding a table that others reference (schema 4's clients) needs foreign keys
            # off, and SQLite only turns them off outside a transaction.
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                if not sqlite:  # two collectors starting at once: one creates, one waits
                    postgres.hold(conn, postgres.SCHEMA)
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
                    MIGRATIONS[version](conn, host or default_host())
                    version += 1
                if sqlite and before != version:
                    broken = conn.exec_driver_sql("PRAGMA foreign_key_check").first()
                    if broken is not None:
                        raise DatabaseError(f"the upgrade broke a foreign key: {tuple(broken)}")
                meta.put(conn, meta.SCHEMA_VERSION, str(version))
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]
    return before, version


def check_schema(engine: Engine, path: str) -> None:
    """Raise ``DatabaseError`` unless ``path`` holds a readable database of our schema version."""
    try:
        with engine.connect() as conn:
            version = schema_version(conn)
    except DBAPIError as exc:  # unreadable, locked, or not an SQLite file at all
        raise DatabaseError(
            f"cannot read database {describe(path)}: {describe_error(exc)}"
        ) from None
    where = describe(path)
    if version is None:
        raise DatabaseError(
            f"database {where} has no ovpnmon schema: run 'ovpnmon-collector init-db' "
            "(or start the collector) first"
        )
    if version > schema.SCHEMA_VERSION:
        raise DatabaseError(
            f"database {where} has schema version {version}, newer than this ovpnmon understands "
            f"({schema.SCHEMA_VERSION}): upgrade ovpnmon"
        )
    if version < schema.SCHEMA_VERSION:
        raise DatabaseError(
            f"database {where} has schema version {version}, older than this ovpnmon needs "
            f"({schema.SCHEMA_VERSION}): run 'ovpnmon-collector init-db' to upgrade it"
        )
