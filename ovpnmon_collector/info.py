"""``ovpnmon-collector info``: what is in the database, for a person or (``--json``) a script."""

from __future__ import annotations

import json
import os
from typing import Any

from sqlalchemy import Engine, func, select

from ovpnmon_common import db, schema
from ovpnmon_common.formatting import format_timestamp
from ovpnmon_common.tiers import ROLLUPS, watermark_key

# the column that says when a row is from, per table
TIME_COLUMNS = {
    "usage_history": "ts",
    "global_history": "ts",
    "global_15min": "bucket",
    "stats_15min": "bucket",
    "stats_hourly": "bucket",
    "stats_6h": "bucket",
    "stats_daily": "bucket",
    "sessions": "connected_since",
    "clients": "first_seen",
    "certificates": "not_after",
}


def database_info(engine: Engine, path: str) -> dict[str, Any]:
    files = [path, f"{path}-wal", f"{path}-shm"]
    size = sum(os.path.getsize(f) for f in files if os.path.exists(f))
    tables: dict[str, dict[str, Any]] = {}
    with engine.connect() as conn:
        meta = db.get_meta_prefix(conn, "")
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
        pages = {
            name: conn.exec_driver_sql(f"PRAGMA {name}").scalar()
            for name in ("page_size", "page_count", "freelist_count")
        }
    heartbeat = meta.get("collector.heartbeat")
    return {
        "database": {"path": os.path.abspath(path), "size_bytes": size, **pages},
        "schema_version": int(meta["schema_version"]),
        "tables": tables,
        "watermarks": {
            r.name: int(meta[watermark_key(r.name)]) if watermark_key(r.name) in meta else None
            for r in ROLLUPS
        },
        "collector": {
            "last_poll": int(heartbeat) if heartbeat else None,
            "interval": int(meta["collector.interval"]) if "collector.interval" in meta else None,
        },
        "sources": {
            key[len("source.") : -len(".health")]: json.loads(value)
            for key, value in meta.items()
            if key.startswith("source.") and key.endswith(".health")
        },
        "certificates_scanned_at": int(meta["certificates.scanned_at"])
        if "certificates.scanned_at" in meta
        else None,
    }


def _when(epoch: int | None) -> str:
    return format_timestamp(epoch) if epoch is not None else "-"


def render_info(facts: dict[str, Any]) -> str:
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
        lines.append(f"  {tier:13s} {_when(mark)}")
    lines.append("")
    lines.append("sources:" if facts["sources"] else "sources: none polled yet")
    for name, health in facts["sources"].items():
        detail = f": {health['message']}" if health.get("message") else ""
        lines.append(f"  {name:12s} {health['state']} since {_when(health.get('since'))}{detail}")
    return "\n".join(lines)
