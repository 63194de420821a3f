"""``ovpnmon-collector info``: what is in the database, for a person or (``--json``) a script."""

from __future__ import annotations

import os
from typing import Any

from sqlalchemy import Engine, func, select

from ovpnmon_common import meta, schema
from ovpnmon_common.formatting import format_timestamp
from ovpnmon_common.storage import engines, location
from ovpnmon_common.tiers import MONTHLY, OPEN, ROLLUPS, TIERS

# the column that says when a row is from, per table
TIME_COLUMNS = {
    **{tier.table.name: tier.time_column for tier in TIERS},
    **{tier.packed.name: "bucket" for tier in TIERS if tier.packed is not None},
    **{tier.table.name: tier.time_column for tier in OPEN.values()},
    MONTHLY.table.name: MONTHLY.time_column,
    "sessions": "connected_since",
    "clients": "first_seen",
    "certificates": "not_after",
}


def database_info(engine: Engine, path: str) -> dict[str, Any]:
    """Size, rows and time span of every table, watermarks and open marks, the collector's
    status."""
    tables: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        size = engines.database_size(conn, path)
        status = meta.read_status(conn)
        for table in schema.metadata.sorted_tables:
            entry: dict[str, Any] = {
                "rows": conn.execute(select(func.count()).select_from(table)).scalar()
            }
            column = TIME_COLUMNS.get(table.name)
            if column is not None:
                col = table.c[column]
                oldest, newest = conn.execute(select(func.min(col), func.max(col))).one()
                entry["oldest"] = oldest
                entry["newest"] = newest
            tables[table.name] = entry
        pages = engines.page_counts(conn)
    return {
        "database": {"path": _where(path), "size_bytes": size, **pages},
        "schema_version": status.schema_version,
        "tables": tables,
        "watermarks": {tier.name: status.watermarks.get(tier.name) for tier in ROLLUPS},
        # where the bucket in progress is summed up to (rollup.sum_open), of the tiers that sum it
        "open": {
            tier.name: status.open_until(tier.name, tier.width)
            for tier in ROLLUPS
            if tier.sums_open and tier.width is not None
        },
        "collector": {"last_poll": status.heartbeat, "interval": status.interval},
        "sources": status.sources,
        "certificates_scanned_at": status.certificates_scanned_at,
    }


def _where(database: str) -> str:
    return (
        location.describe(database) if location.is_postgres(database) else os.path.abspath(database)
    )


def _when(epoch: int | None) -> str:
    return format_timestamp(epoch) if epoch is not None else "-"


def render_info(facts: dict[str, Any]) -> str:
    """``database_info``'s facts as the text ``info`` prints."""
    db_facts = facts["database"]
    lines = [
        f"database   {db_facts['path']}",
        f"size       {db_facts['size_bytes'] / 1_048_576:.1f} MiB "
        f"({db_facts['freelist_count']} free pages of {db_facts['page_count']}), "
        f"schema version {facts['schema_version']}",
        f"last poll  {_when(facts['collector']['last_poll'])} UTC"
        + (f", every {facts['collector']['interval']} s" if facts["collector"]["interval"] else ""),
        "",
        f"{'table':16s} {'rows':>12s}  {'oldest (UTC)':19s}  {'newest (UTC)':19s}",
    ]
    for name, entry in facts["tables"].items():
        lines.append(
            f"{name:16s} {entry['rows']:12d}  {_when(entry.get('oldest')):19s}  "
            f"{_when(entry.get('newest')):19s}"
        )
    lines.append("")
    lines.append("rollups final up to (UTC):")
    for tier, mark in facts["watermarks"].items():
        summed = facts["open"].get(tier)
        opened = f", the bucket in progress summed up to {_when(summed)}" if summed else ""
        lines.append(f"  {tier:13s} {_when(mark)}{opened}")
    lines.append("")
    lines.append("sources:" if facts["sources"] else "sources: none polled yet")
    for name, health in facts["sources"].items():
        detail = f": {health['message']}" if health.get("message") else ""
        lines.append(f"  {name:12s} {health['state']} since {_when(health.get('since'))}{detail}")
    return "\n".join(lines)
