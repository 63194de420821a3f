"""Retention: delete what ``[retention]`` no longer keeps, then give the space back.

Never deletes raw samples (or a tier's rows) that the next coarser tier has not yet been built
from: each cutoff stops at that tier's watermark. Deletes run in short transactions (spans
widen while they stay quick) and space goes back with ``PRAGMA incremental_vacuum`` in small
steps, so neither the collector's polls nor the API's readers wait long.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine, Table, delete, func, select

from ovpnmon_common import db, schema
from ovpnmon_common.buckets import DAY, align
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.tiers import watermark_key

SLICE_SECONDS = 0.05
VACUUM_PAGES = 512


@dataclass(frozen=True)
class Target:
    table: Table
    column: str  # "ts" or "bucket"
    retention_key: str
    guarded_by: str | None  # the tier built from this table: its watermark bounds the cutoff


TARGETS = (
    Target(schema.usage_history, "ts", "raw_days", "quarter_hour"),
    Target(schema.stats_15min, "bucket", "raw_days", "hourly"),
    Target(schema.global_history, "ts", "raw_days", "global_15min"),
    Target(schema.stats_hourly, "bucket", "hourly_days", "six_hour"),
    Target(schema.global_15min, "bucket", "hourly_days", None),
    Target(schema.stats_6h, "bucket", "six_hour_days", "daily"),
    Target(schema.stats_daily, "bucket", "daily_days", None),
)


@dataclass
class PruneReport:
    deleted: dict[str, int] = field(default_factory=dict)
    cutoffs: dict[str, int | None] = field(default_factory=dict)
    pages_freed: int = 0
    complete: bool = True


def cutoff(
    retention: RetentionConfig, target: Target, now: int, watermarks: dict[str, str]
) -> int | None:
    """Rows before this epoch second go; None keeps everything. Whole UTC days only, so a tier
    rebuilt later from what is left never sees a partial bucket."""
    days = int(getattr(retention, target.retention_key))
    if days == 0:
        return None
    limit = align(now - days * DAY, DAY)
    if target.guarded_by is not None:
        built = watermarks.get(watermark_key(target.guarded_by))
        if built is None:
            return None  # the coarser tier was never built from it: keep everything
        limit = min(limit, align(int(built), DAY))
    return limit


def prune(
    engine: Engine,
    retention: RetentionConfig,
    now: int,
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> PruneReport:
    report = PruneReport()
    with engine.connect() as conn:
        watermarks = db.get_meta_prefix(conn, "")
    for target in TARGETS:
        table = target.table
        name = table.name
        limit = cutoff(retention, target, now, watermarks)
        report.cutoffs[name] = limit
        report.deleted[name] = 0
        if limit is None:
            continue
        column = table.c[target.column]
        with engine.connect() as conn:
            oldest = _oldest(conn, target)
        if oldest is None or oldest >= limit:
            continue
        start, span = oldest, 3600
        while start < limit:
            if deadline is not None and clock() >= deadline:
                report.complete = False
                return report
            end = min(limit, start + span)
            began = time.perf_counter()
            with engine.begin() as conn:
                result = conn.execute(delete(table).where(column >= start, column < end))
                report.deleted[name] += result.rowcount or 0
            start = end
            if time.perf_counter() - began < SLICE_SECONDS / 4:
                span = min(span * 2, 30 * DAY)
    report.pages_freed = vacuum(engine, deadline=deadline, clock=clock)
    return report


def _oldest(conn: Connection, target: Target) -> int | None:
    table = target.table
    column = table.c[target.column]
    return conn.execute(select(func.min(column))).scalar()


def vacuum(
    engine: Engine, *, deadline: float | None = None, clock: Callable[[], float] = time.monotonic
) -> int:
    """Return free pages to the file system, a few hundred pages per step."""
    if engine.dialect.name != "sqlite":
        return 0
    freed = 0
    raw = engine.raw_connection()
    try:
        while deadline is None or clock() < deadline:
            free = raw.execute("PRAGMA freelist_count").fetchone()[0]
            if free == 0:
                break
            raw.execute(f"PRAGMA incremental_vacuum({VACUUM_PAGES})").fetchall()
            freed += min(free, VACUUM_PAGES)
    finally:
        raw.close()
    return freed
