"""Creating, checking and upgrading the schema: ``init_db`` is idempotent, ``check_schema``
tells a reader (the API, ``info``) in one sentence what is wrong and what to run.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Connection, Engine, MetaData, Table, func, inspect, select
from sqlalchemy.exc import DBAPIError

from ovpnmon_common import meta, schema
from ovpnmon_common.storage import DatabaseError, describe_error
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


# from-version -> function upgrading to from-version + 1
MIGRATIONS: dict[int, Any] = {1: _to_version_2, 2: _to_version_3}


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
        meta.put(conn, meta.SCHEMA_VERSION, str(version))
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
