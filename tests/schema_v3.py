"""A database as ovpnmon with schema 3 left it, made from a current one: what the upgrade to
schema 4 (hosts) and the older upgrades' tests start from. Schema 3 had one collector: its
heartbeat, interval, poll time, certificate scan time and its sources' records were ``meta``
keys, and no table had a ``host_id``. Before schema 5 every raw sample was a row of
``usage_history``: the packed ones go back to rows."""

from __future__ import annotations

import json

from sqlalchemy import Index, MetaData, Table, UniqueConstraint, select, text
from sqlalchemy.schema import CreateTable

from ovpnmon_common import meta, packed, schema

_V3 = MetaData(naming_convention=schema.metadata.naming_convention)


def _without_host(table: Table, *extra) -> Table:
    columns = [c._copy() for c in table.columns if c.name != "host_id"]
    return Table(table.name, _V3, *columns, *extra)


V3_TABLES = [
    _without_host(schema.clients, UniqueConstraint("common_name")),
    _without_host(
        schema.sessions,
        UniqueConstraint("source", "session_key", "connected_since"),
        Index(None, "client_id", "connected_since"),
        Index(None, "connected_since"),
        Index(
            "ix_sessions_open",
            "client_id",
            "connected_since",
            sqlite_where=text("disconnected_at IS NULL"),
            postgresql_where=text("disconnected_at IS NULL"),
        ),
    ),
    _without_host(schema.session_counters),
    _without_host(schema.global_history),
    _without_host(schema.global_15min),
    _without_host(schema.certificates),
]


def as_schema_3(engine) -> None:
    """Turn ``engine``'s current database with at most one host into what schema 3 stored."""
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as conn:
        if sqlite:
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")
        with conn.begin():
            hosts = conn.execute(select(schema.hosts)).mappings().all()
            assert len(hosts) <= 1, "schema 3 had one collector"
            entries: dict[str, str] = {}
            for host in hosts:
                for key, column in (
                    ("collector.heartbeat", "heartbeat"),
                    ("collector.interval", "interval"),
                    ("certificates.scanned_at", "certificates_scanned_at"),
                ):
                    if host[column] is not None:
                        entries[key] = str(host[column])
                if host["poll_seconds"] is not None:
                    entries["collector.poll_seconds"] = f"{host['poll_seconds']:.6f}"
            closed = {}
            for row in conn.execute(select(schema.sources)).mappings():
                if row["health"] is not None:
                    entries[f"source.{row['name']}.health"] = row["health"]
                if row["first_watched"] is not None:
                    entries[f"source.{row['name']}.first_watched"] = str(row["first_watched"])
                if row["closed_since"] is not None:
                    closed[row["name"]] = row["closed_since"]
            if closed:
                entries["collector.closed_since"] = json.dumps(closed, sort_keys=True)
            if entries:
                meta.put_many(conn, entries)
            unpacked = [
                {"client_id": cid, "ts": ts, "bytes_received": rx, "bytes_sent": tx}
                for cid, ts, rx, tx in packed.raw_samples(conn)
            ]
            conn.execute(schema.usage_history.delete())
            if unpacked:
                conn.execute(schema.usage_history.insert(), unpacked)
            schema.usage_packed.drop(conn)
            meta.delete(conn, [meta.PACKED])
            schema.sources.drop(conn)
            schema.hosts.drop(conn)
            for table in V3_TABLES:
                _rebuild(conn, table)
            meta.put(conn, meta.SCHEMA_VERSION, "3")
        if sqlite:
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")


def _rebuild(conn, table: Table) -> None:
    name = table.name
    columns = ", ".join(c.name for c in table.columns)
    if conn.dialect.name == "postgresql":
        # the keys holding host_id go with it; schema 3's come back in their place
        had_key = "host_id" in schema.metadata.tables[name].primary_key.columns
        conn.exec_driver_sql(f"ALTER TABLE {name} DROP COLUMN host_id")
        if had_key:
            key = ", ".join(c.name for c in table.primary_key.columns)
            conn.exec_driver_sql(f"ALTER TABLE {name} ADD CONSTRAINT pk_{name} PRIMARY KEY ({key})")
        for unique in table.constraints:
            if isinstance(unique, UniqueConstraint):
                cols = ", ".join(c.name for c in unique.columns)
                conn.exec_driver_sql(
                    f"ALTER TABLE {name} ADD CONSTRAINT {unique.name} UNIQUE ({cols})"
                )
        return
    ddl = str(CreateTable(table).compile(dialect=conn.dialect)).strip()
    conn.exec_driver_sql(ddl.replace(f"CREATE TABLE {name} (", f"CREATE TABLE {name}_v3 (", 1))
    conn.exec_driver_sql(f"INSERT INTO {name}_v3 ({columns}) SELECT {columns} FROM {name}")
    conn.exec_driver_sql(f"DROP TABLE {name}")
    conn.exec_driver_sql(f"ALTER TABLE {name}_v3 RENAME TO {name}")
    for index in table.indexes:
        index.create(conn)
