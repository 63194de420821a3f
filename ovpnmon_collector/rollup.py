"""Rollups: raw -> hourly -> 6-hour -> daily per client, and the whole-server 15-minute tier.

Each tier has a watermark (``meta`` key ``rollup.<tier>.watermark``): every bucket before it is
final in the tier's table. A rollup computes the buckets between the watermark and the last closed
bucket in short transactions (so the collector's polls never wait long), replacing whatever the
table held for them; running it again changes nothing. Buckets after the watermark, including
the one in progress, are read from the next finer tier by the API (``ovpnmon_common.tiers``).

Each tier is built from the next finer one, so a backfill after raw samples were pruned still has
something to build from, and the sums of every tier agree with the raw samples they came from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, delete, func, insert, select

from ovpnmon_common import db, schema
from ovpnmon_common.buckets import align, align_up
from ovpnmon_common.tiers import ROLLUPS, Rollup, sql_align, watermark_key

log = logging.getLogger("ovpnmon.rollup")


@dataclass
class RollupReport:
    tier: str
    buckets: int
    watermark: int | None


def _source_select(rollup: Rollup, start: int, end: int):
    """SELECT of the finer data in ``[start, end)`` grouped into ``rollup``'s buckets."""
    src = rollup.source
    width = rollup.width
    if rollup.name == "global_15min":
        bucket = sql_align(src.c.ts, width).label("bucket")
        return (
            select(
                bucket,
                func.sum(src.c.bytes_received),
                func.sum(src.c.bytes_sent),
                func.max(src.c.active_count),
                func.count(),
            )
            .where(src.c.ts >= start, src.c.ts < end)
            .group_by(bucket)
        )
    if src is schema.usage_history:
        bucket = sql_align(src.c.ts, width).label("bucket")
        samples: Any = func.count()
        where = [src.c.ts >= start, src.c.ts < end]  # a range of the (ts, client_id) key
    else:
        bucket = sql_align(src.c.bucket, width).label("bucket")
        samples = func.sum(src.c.samples)
        where = [src.c.bucket >= start, src.c.bucket < end]
    return (
        select(
            src.c.client_id,
            bucket,
            func.sum(src.c.bytes_received),
            func.sum(src.c.bytes_sent),
            samples,
        )
        .where(*where)
        .group_by(src.c.client_id, bucket)
    )


def rebuild(conn: Connection, rollup: Rollup, start: int, end: int) -> None:
    """Replace ``rollup``'s buckets in ``[start, end)`` with the sums of its source."""
    table = rollup.table
    conn.execute(delete(table).where(table.c.bucket >= start, table.c.bucket < end))
    columns = (
        ["bucket", "bytes_received", "bytes_sent", "max_active", "samples"]
        if rollup.name == "global_15min"
        else ["client_id", "bucket", "bytes_received", "bytes_sent", "samples"]
    )
    conn.execute(insert(table).from_select(columns, _source_select(rollup, start, end)))


def _bounds(conn: Connection, rollup: Rollup, now: int) -> tuple[int | None, int]:
    """(watermark, end of the last closed bucket this tier may build now)."""
    stored = db.get_meta(conn, watermark_key(rollup.name))
    limit = align(now, rollup.width)
    if rollup.finer is not None:  # only whole buckets of the finer tier's final data
        finer = db.get_meta(conn, watermark_key(rollup.finer))
        limit = min(limit, align(int(finer), rollup.width)) if finer else 0
    if stored is not None:
        return int(stored), limit
    first = _oldest(conn, rollup)
    return (align(first, rollup.width) if first is not None else None), limit


def _oldest(conn: Connection, rollup: Rollup) -> int | None:
    src = rollup.source
    column = src.c.bucket if "bucket" in src.c else src.c.ts
    return conn.execute(select(func.min(column))).scalar()


# Longest a rollup transaction holds the write lock: a poll waits at most this long for it.
SLICE_SECONDS = 0.05

_MARKS = db.Prepared(
    select(schema.meta.c.key, schema.meta.c.value).where(
        schema.meta.c.key.like(bindparam("pattern"))
    )
)


def late_tiers(conn: Connection, ts: int) -> list[Rollup]:
    """The tiers that already hold the bucket of ``ts`` as final: a poll at ``ts`` is late for
    them (the wall clock stepped back, or a rollup ran while it was ahead)."""
    marks = dict(_MARKS(conn, pattern="rollup.%.watermark").all())
    late = []
    for rollup in ROLLUPS:
        mark = marks.get(watermark_key(rollup.name))
        if mark is not None and align(ts, rollup.width) < int(mark):
            late.append(rollup)
    return late


def fold_in(
    conn: Connection,
    late: list[Rollup],
    ts: int,
    samples: list[tuple[int, int, int, int]],
    server: tuple[int, int, int, int],
) -> None:
    """Add one poll's rows at ``ts`` into the ``late`` tiers' final buckets, in the poll's own
    transaction: every tier then equals the raw sums of its buckets at every commit, whatever
    the wall clock did. ``samples`` are (client id, bytes received, bytes sent, new raw rows:
    0 when the poll's row merged into one of the same second); ``server`` the same for the
    whole-server row, with the active count in place of the client id.

    Watermarks never move back instead: a tier rebuilt from finer data that retention has
    already pruned would lose what it held."""
    add: dict[str, db.Merge] = {"bytes_received": "add", "bytes_sent": "add", "samples": "add"}
    for rollup in late:
        bucket = align(ts, rollup.width)
        if rollup.name == "global_15min":
            active, rx, tx, new = server
            db.upsert(
                conn,
                rollup.table,
                [
                    {
                        "bucket": bucket,
                        "bytes_received": rx,
                        "bytes_sent": tx,
                        "max_active": active,
                        "samples": new,
                    }
                ],
                ["bucket"],
                merge={**add, "max_active": "max"},
            )
            continue
        rows = [(cid, bucket, rx, tx, new) for cid, rx, tx, new in samples]
        db.upsert_tuples(conn, rollup.table, TIER_COLUMNS, rows, ["client_id", "bucket"], merge=add)


TIER_COLUMNS = ("client_id", "bucket", "bytes_received", "bytes_sent", "samples")


def catch_up(
    engine: Engine,
    now: int,
    *,
    deadline: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> list[RollupReport]:
    """Bring every tier up to the last closed bucket.

    Buckets are built oldest first in transactions of at most ``SLICE_SECONDS`` each, so a poll
    never waits long for the lock. With ``deadline`` (a ``clock`` value) it stops early and
    resumes next call: the daemon gives it the time until the next poll.
    """
    reports = []
    for rollup in ROLLUPS:
        done = 0
        watermark: int | None = None
        while deadline is None or clock() < deadline:
            with engine.begin() as conn:
                watermark, limit = _bounds(conn, rollup, now)
                if watermark is None or watermark >= limit:
                    break
                slice_end = time.perf_counter() + SLICE_SECONDS
                span = 1  # buckets per statement: doubles while statements stay quick
                while watermark < limit and time.perf_counter() < slice_end:
                    end = min(limit, watermark + span * rollup.width)
                    started = time.perf_counter()
                    rebuild(conn, rollup, watermark, end)
                    done += (end - watermark) // rollup.width
                    watermark = end
                    if time.perf_counter() - started < SLICE_SECONDS / 10:
                        span = min(span * 2, 256)
                db.set_meta(conn, watermark_key(rollup.name), str(watermark))
        reports.append(RollupReport(rollup.name, done, watermark))
        if done:
            log.debug("rollup %s: %d buckets, watermark %s", rollup.name, done, watermark)
    return reports


def backfill(
    engine: Engine, start: int, end: int, tiers: list[str] | None = None
) -> list[RollupReport]:
    """Recompute the chosen tiers over ``[start, end)`` from the finest data still present.

    Buckets after a tier's watermark are left alone (the API reads them from finer data and the
    next rollup builds them). Hourly buckets before the oldest raw sample are kept as they are:
    their raw data is gone, and the hourly rows are now the finest data there is.
    """
    reports = []
    for rollup in ROLLUPS:
        if tiers and rollup.name not in tiers:
            continue
        with engine.begin() as conn:
            stored = db.get_meta(conn, watermark_key(rollup.name))
            if stored is None:
                reports.append(RollupReport(rollup.name, 0, None))
                continue
            low = align(start, rollup.width)
            oldest = _oldest(conn, rollup)
            if oldest is None:
                reports.append(RollupReport(rollup.name, 0, int(stored)))
                continue
            low = max(low, align(oldest, rollup.width))
            high = min(int(stored), align_up(end, rollup.width))
        count = 0
        for bucket in range(low, high, rollup.width):
            with engine.begin() as conn:
                rebuild(conn, rollup, bucket, bucket + rollup.width)
            count += 1
        reports.append(RollupReport(rollup.name, count, int(stored)))
    return reports
