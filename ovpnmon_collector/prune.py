"""Retention: delete what ``[retention]`` no longer keeps, then give the space back.

Every tier of ``ovpnmon_common.tiers`` keeps its ``retention_key``'s days. Never deletes rows
that the next coarser tier has not yet been built from: each cutoff stops at that tier's
watermark. Closed sessions (the connection log) keep ``sessions_days`` after they closed; a
client's lifetime totals do not need them (``clients.closed_*`` holds what they counted), and
open sessions always stay. Deletes run in short transactions (spans widen while they stay quick)
and space goes back in small steps, so neither the collector's polls nor the API's readers wait
long.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Engine, delete, func, select

from ovpnmon_collector.clock import SYSTEM_CLOCK, Clock
from ovpnmon_collector.slices import SLICE_SECONDS, oldest, spans
from ovpnmon_common import meta, schema
from ovpnmon_common.buckets import DAY, HOUR, align
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.storage import engines
from ovpnmon_common.tiers import TIERS, Tier, built_on


@dataclass
class PruneReport:
    """Rows deleted and the cutoff used, per table; pages given back; False ``complete`` when
    the deadline came first (the next call goes on)."""

    deleted: dict[str, int] = field(default_factory=dict)
    cutoffs: dict[str, int | None] = field(default_factory=dict)
    pages_freed: int = 0
    complete: bool = True


def cutoff(
    retention: RetentionConfig, tier: Tier, now: int, watermarks: dict[str, int]
) -> int | None:
    """Rows of ``tier`` before this epoch second go; None keeps everything. Whole UTC days only,
    so a tier rebuilt later from what is left never sees a partial bucket."""
    days = tier.retention_days(retention)
    if days == 0:
        return None
    limit = align(now - days * DAY, DAY)
    coarser = built_on(tier)
    if coarser is not None:
        built = watermarks.get(coarser.name)
        if built is None:
            return None  # the coarser tier was never built from it: keep everything
        limit = min(limit, align(built, DAY))
    return limit


def prune(
    engine: Engine,
    retention: RetentionConfig,
    now: int,
    *,
    deadline: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> PruneReport:
    """Delete every tier's rows older than its retention, oldest first, then vacuum; with
    ``deadline`` (a ``clock.monotonic()`` value) stop early, to go on next call."""
    report = PruneReport()
    with engine.connect() as conn:
        watermarks = meta.watermarks(conn)
    for tier in TIERS:
        name = tier.table.name
        limit = cutoff(retention, tier, now, watermarks)
        report.cutoffs[name] = limit
        report.deleted[name] = 0
        if tier.packed is not None:
            report.cutoffs[tier.packed.name] = limit
            report.deleted[tier.packed.name] = 0
        if limit is None:
            continue
        with engine.connect() as conn:
            first = oldest(conn, tier)
            held_from = meta.get(conn, meta.pruned_key(tier.name))
        if first is None or first >= limit:
            # nothing to delete; say so anyway: a reader takes "before" as gone, also where
            # nothing ever was or an older ovpnmon deleted it without saying
            if held_from is None or int(held_from) < limit:
                with engine.begin() as conn:
                    engines.hold_tiers(conn, shared=False)
                    meta.put(conn, meta.pruned_key(tier.name), str(limit))
            continue
        for start, end in spans(first, limit, HOUR, 30 * DAY, SLICE_SECONDS / 4):
            if deadline is not None and clock.monotonic() >= deadline:
                report.complete = False
                return report
            with engine.begin() as conn:
                engines.hold_tiers(conn, shared=False)  # not while a backfill reads them
                result = conn.execute(delete(tier.table).where(tier.time >= start, tier.time < end))
                report.deleted[name] += result.rowcount or 0
                if tier.packed is not None:  # whole days: a packed bucket is wholly in or out
                    bucket = tier.packed.c.bucket
                    result = conn.execute(delete(tier.packed).where(bucket >= start, bucket < end))
                    report.deleted[tier.packed.name] += result.rowcount or 0
                # in the same transaction: a reader never sees rows gone and the key behind
                meta.put(conn, meta.pruned_key(tier.name), str(end))
    _prune_sessions(engine, retention, now, report, deadline, clock)
    if not report.complete:
        return report
    report.pages_freed = engines.give_back_space(
        engine, deadline=deadline, monotonic=clock.monotonic
    )
    return report


SESSION_BATCH = 5000  # ids a delete transaction covers


def _prune_sessions(
    engine: Engine,
    retention: RetentionConfig,
    now: int,
    report: PruneReport,
    deadline: float | None,
    clock: Clock,
) -> None:
    """Delete sessions closed before the cutoff (whole UTC days), oldest ids first, a batch of
    ids a transaction; ``report.complete`` turns False when the deadline came first."""
    s = schema.sessions
    report.deleted["sessions"] = 0
    if retention.sessions_days == 0:
        report.cutoffs["sessions"] = None
        return
    limit = align(now - retention.sessions_days * DAY, DAY)
    report.cutoffs["sessions"] = limit
    with engine.connect() as conn:
        # a session that closed before the cutoff connected before it too
        low, high = conn.execute(
            select(func.min(s.c.id), func.max(s.c.id)).where(s.c.connected_since < limit)
        ).one()
    if low is None:
        return
    for start in range(low, high + 1, SESSION_BATCH):
        if deadline is not None and clock.monotonic() >= deadline:
            report.complete = False
            return
        with engine.begin() as conn:
            result = conn.execute(
                delete(s).where(
                    s.c.id >= start,
                    s.c.id < start + SESSION_BATCH,
                    s.c.disconnected_at.is_not(None),
                    s.c.disconnected_at < limit,
                )
            )
            report.deleted["sessions"] += result.rowcount or 0
