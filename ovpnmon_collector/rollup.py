"""Rollups: raw -> 15-minute -> hourly -> 6-hour -> daily per client, and the whole-server
15-minute tier; ``ovpnmon_common.tiers`` says which is built from which.

Each tier has a watermark (``ovpnmon_common.meta.watermark_key``): every bucket before it is
final in the tier's table. A rollup computes the buckets between the watermark and the last
closed bucket in short transactions (so the collector's polls never wait long), replacing
whatever the table held for them; running it again changes nothing. Buckets after the
watermark, including the one in progress, are read from the next finer tier by the API; except
that a tier marked ``sums_open`` also holds the bucket in progress summed up to its open mark
(``sum_open``), and readers take only what comes after the mark from finer tiers. The
15-minute tier sums its raw samples after every poll (``sum_recent``), in a table of its own
(``tiers.in_progress``: ``stats_15min_open``), and closes the bucket by writing those rows and
its samples after the mark into ``stats_15min`` (``_close``; the rows equal the raw sums before
the mark at every commit), not by a rebuild. The daily tier sums the day's final 15-minute
buckets each time one closes (its mark is the 15-minute watermark), so a reader of today takes
one row a client, the open quarter-hour and the raw samples after its mark; the day closes by
a rebuild from its six-hour buckets.

Each tier is built from the next finer one, so a backfill after raw samples were pruned still has
something to build from, and the sums of every tier agree with the raw samples they came from.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    bindparam,
    delete,
    func,
    insert,
    literal,
    select,
    union_all,
)

from ovpnmon_collector.clock import SYSTEM_CLOCK, Clock
from ovpnmon_collector.slices import SLICE_SECONDS, oldest, spans
from ovpnmon_common import meta, schema
from ovpnmon_common.buckets import align, align_up
from ovpnmon_common.meta import watermark_key
from ovpnmon_common.storage import engines, statements
from ovpnmon_common.tiers import BY_NAME, ROLLUPS, Tier, in_progress, source_of, sql_align

log = logging.getLogger("ovpnmon.rollup")


@dataclass
class RollupReport:
    """What one tier's catch-up or backfill did: buckets built, the watermark after."""

    tier: str
    buckets: int
    watermark: int | None


def _of_host(table: Any, host_id: int | None) -> list[Any]:
    """The condition keeping ``table``'s rows of host ``host_id`` (none: every host's)."""
    if host_id is None:
        return []
    if "host_id" in table.c:
        return [table.c.host_id == host_id]
    clients = schema.clients
    return [table.c.client_id.in_(select(clients.c.id).where(clients.c.host_id == host_id))]


def _source_select(tier: Tier, start: Any, end: Any, host_id: int | None = None) -> Any:
    """SELECT of the finer data in ``[start, end)`` (of host ``host_id`` only, if given)
    grouped into ``tier``'s buckets, in the order of ``_columns(tier)``."""
    src = source_of(tier)
    table, when = src.table, src.time
    assert tier.width is not None
    bucket = sql_align(when, tier.width).label("bucket")
    # a raw row is one sample; a finer tier's row counts its own
    samples = (func.count() if src.raw else func.sum(table.c.samples)).label("samples")
    sums = [
        func.sum(table.c.bytes_received).label("bytes_received"),
        func.sum(table.c.bytes_sent).label("bytes_sent"),
    ]
    where = [when >= start, when < end, *_of_host(table, host_id)]  # raw: a (ts, ...) key range
    if tier.per_client:
        rows = (
            select(table.c.client_id, bucket, *sums, samples)
            .where(*where)
            .group_by(table.c.client_id, bucket)
        )
        if src.packed is None:
            return rows
        # raw samples: the rows, and the packed buckets' sums
        packed = src.packed
        in_packed = [packed.c.bucket >= start, packed.c.bucket < end, *_of_host(packed, host_id)]
        both = union_all(
            rows,
            select(
                packed.c.client_id,
                sql_align(packed.c.bucket, tier.width).label("bucket"),
                packed.c.bytes_received,
                packed.c.bytes_sent,
                packed.c.samples,
            ).where(*in_packed),
        ).subquery("raw")
        return select(
            both.c.client_id,
            both.c.bucket,
            func.sum(both.c.bytes_received),
            func.sum(both.c.bytes_sent),
            func.sum(both.c.samples),
        ).group_by(both.c.client_id, both.c.bucket)
    peak = table.c.active_count if src.raw else table.c.max_active
    return (
        select(bucket, table.c.host_id, *sums, func.max(peak), samples)
        .where(*where)
        .group_by(bucket, table.c.host_id)
    )


def _columns(tier: Tier) -> tuple[str, ...]:
    return TIER_COLUMNS if tier.per_client else SERVER_COLUMNS


TIER_COLUMNS = ("client_id", "bucket", "bytes_received", "bytes_sent", "samples")
SERVER_COLUMNS = ("bucket", "host_id", "bytes_received", "bytes_sent", "max_active", "samples")


def rebuild(conn: Connection, tier: Tier, start: int, end: int, host_id: int | None = None) -> None:
    """Replace ``tier``'s buckets in ``[start, end)`` with the sums of its source (the rows of
    host ``host_id`` only, if given: ``copy-to`` filling in a host it brought)."""
    table = tier.table
    window = [table.c.bucket >= start, table.c.bucket < end, *_of_host(table, host_id)]
    conn.execute(delete(table).where(*window))
    select_ = _source_select(tier, start, end, host_id)
    conn.execute(insert(table).from_select(list(_columns(tier)), select_))


def _bounds(conn: Connection, tier: Tier, now: int) -> tuple[int | None, int, int | None]:
    """(watermark, end of the last closed bucket this tier may build now, where the bucket at
    the watermark is summed up to: ``_summed``)."""
    assert tier.width is not None
    marks, opened = meta.rollup_marks(conn)
    limit = align(now, tier.width)
    src = source_of(tier)
    if not src.raw:  # only whole buckets of the finer tier's final data
        finer = marks.get(src.name)
        limit = min(limit, align(finer, tier.width)) if finer else 0
    stored = marks.get(tier.name)
    if stored is not None:
        return stored, limit, _summed(tier, stored, opened)
    first = oldest(conn, src)
    return (align(first, tier.width) if first is not None else None), limit, None


def _summed(tier: Tier, watermark: int, opened: dict[str, int]) -> int | None:
    """Where ``tier``'s bucket at ``watermark`` is summed up to, given the open marks
    ``opened`` (``meta.open_until``): None for a tier that does not sum it."""
    if not tier.sums_open or tier.width is None:
        return None
    return meta.open_until(watermark, opened.get(tier.name), tier.width)


def late_tiers(conn: Connection, ts: int) -> list[Tier]:
    """The tiers that already hold the samples at ``ts`` (the bucket of ``ts`` is final, or it is
    the bucket in progress summed past ``ts``): a poll at ``ts`` is late for them (the wall clock
    stepped back, or a rollup ran while it was ahead)."""
    marks, opened = meta.rollup_marks(conn)
    late = []
    for tier in ROLLUPS:
        mark = marks.get(tier.name)
        if mark is None or tier.width is None:
            continue
        summed = _summed(tier, mark, opened)
        if align(ts, tier.width) < mark:
            late.append(tier)
        elif summed is not None and ts < summed:
            late.append(in_progress(tier))  # the bucket in progress, where it is summed
    return late


def fold_in(
    conn: Connection,
    late: list[Tier],
    ts: int,
    host_id: int,
    samples: list[tuple[int, int, int, int]],
    server: tuple[int, int, int, int],
) -> None:
    """Add one poll's rows at ``ts`` into the ``late`` tiers' final buckets, in the poll's own
    transaction: every tier then equals the raw sums of its buckets at every commit, whatever
    the wall clock did. ``samples`` are (client id, bytes received, bytes sent, new raw rows:
    0 when the poll's row merged into one of the same second); ``server`` the same for the
    whole-server row of host ``host_id``, with the active count in place of the client id.

    Watermarks never move back instead: a tier rebuilt from finer data that retention has
    already pruned would lose what it held."""
    for tier in late:
        assert tier.width is not None
        bucket = align(ts, tier.width)
        rows: list[tuple[int, ...]]
        if tier.per_client:
            rows = [(cid, bucket, rx, tx, new) for cid, rx, tx, new in samples]
        else:
            active, rx, tx, new = server
            rows = [(bucket, host_id, rx, tx, active, new)]
        _add(conn, tier, rows)


def _add(conn: Connection, tier: Tier, rows: list[tuple[int, ...]]) -> None:
    """Add ``rows`` (in ``_columns(tier)`` order) to ``tier``'s rows of the same key."""
    statements.upsert_tuples(
        conn,
        tier.table,
        _columns(tier),
        rows,
        _KEYS[tier.per_client],
        merge=_MERGE[tier.per_client],
    )


_SUMS: dict[str, statements.Merge] = {
    "bytes_received": "add",
    "bytes_sent": "add",
    "samples": "add",
}
# per client (True) or the whole server's (False): each row's key, and how rows of a key merge
_KEYS = {True: ["client_id", "bucket"], False: ["bucket", "host_id"]}
_MERGE = {True: _SUMS, False: {**_SUMS, "max_active": "max"}}


def catch_up(
    engine: Engine,
    now: int,
    *,
    deadline: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
) -> list[RollupReport]:
    """Bring every tier up to the last closed bucket, then sum the bucket in progress of the
    tiers that keep it (``sum_open``).

    Buckets are built oldest first in transactions of at most ``SLICE_SECONDS`` each, so a poll
    never waits long for the lock. With ``deadline`` (a ``clock.monotonic()`` value) it stops
    early and resumes next call: the daemon gives it the time until the next poll.
    """
    reports = []
    for tier in ROLLUPS:
        assert tier.width is not None
        done = 0
        watermark: int | None = None
        while deadline is None or clock.monotonic() < deadline:
            with engine.begin() as conn:
                engines.hold_tiers(conn, shared=False)  # no poll adds to a bucket summed here
                watermark, limit, summed = _bounds(conn, tier, now)
                if watermark is None or watermark >= limit:
                    break
                slice_end = time.perf_counter() + SLICE_SECONDS
                if summed is not None and source_of(tier).raw:
                    # the bucket's samples before its open mark are in already (a tier summed
                    # from final finer buckets is rebuilt below, its open row replaced)
                    _close(conn, tier, watermark, summed)
                    watermark += tier.width
                    done += 1
                # one bucket per statement at first, doubling while statements stay quick
                most, quick = 256 * tier.width, SLICE_SECONDS / 10
                for first, end in spans(watermark, limit, tier.width, most, quick):
                    rebuild(conn, tier, first, end)
                    done += (end - first) // tier.width
                    watermark = end
                    if time.perf_counter() >= slice_end:
                        break
                meta.put(conn, watermark_key(tier.name), str(watermark))
        reports.append(RollupReport(tier.name, done, watermark))
        if done:
            log.debug("rollup %s: %d buckets, watermark %s", tier.name, done, watermark)
    for tier in ROLLUPS:
        if tier.sums_open and (deadline is None or clock.monotonic() < deadline):
            with engine.begin() as conn:
                engines.hold_tiers(conn, shared=False)
                sum_open(conn, tier, now)
    return reports


def sum_open(conn: Connection, tier: Tier, now: int) -> None:
    """Sum the samples before ``now`` of ``tier``'s bucket in progress (the one at its watermark)
    into the table it is summed in (``tiers.in_progress``), and move its open mark
    (``meta.open_until``) to ``now``; for a tier not built from raw samples (the day), its final
    15-minute buckets instead (``_sum_final``).

    Readers then take the bucket in progress from the tier's rows and only the samples after the
    mark from the finer tier: every client's bytes of the last 24 hours read no raw sample
    (``sum_recent`` runs after every poll) rather than up to a whole bucket of them. A mark of
    an older bucket starts the bucket afresh; a valid one adds only the samples since it, so
    each run reads about a poll's samples, and so does the bucket's closing (``catch_up``,
    ``_close``). Polls before the mark add themselves (``late_tiers``, ``fold_in``)."""
    assert tier.width is not None
    marks, opened = meta.rollup_marks(conn)
    watermark = marks.get(tier.name)
    if watermark is None or watermark != align(now, tier.width):
        return  # no data yet, or closed buckets still to build first
    summed = _summed(tier, watermark, opened)
    if not source_of(tier).raw:
        _sum_final(conn, tier, watermark, summed, marks.get(FINAL_SOURCE.name))
        return
    if now <= (summed or watermark):  # nothing new (the wall clock stepped back)
        return
    into = in_progress(tier)
    if summed is None:
        if into is not tier:  # rows left of a bucket since made final without them
            conn.execute(delete(into.table))
        rebuild(conn, into, watermark, now)
    else:
        _add_since(conn, into, summed, now)
    meta.put(conn, meta.open_key(tier.name), str(now))


def sum_recent(engine: Engine, now: int) -> None:
    """``sum_open`` of the tiers that sum their bucket in progress from raw samples (the
    15-minute tier) up to the end of the second ``now``, in a transaction of its own: the
    daemon runs it after every poll, so that a reader of a range that ends now reads no raw
    samples (at 10,000 clients one poll's sums cost about 21 ms and 210 kB of WAL in the
    bucket's own table, ``tiers.in_progress``). A poll later in that second is before the mark,
    and adds itself (``late_tiers``)."""
    for tier in ROLLUPS:
        if tier.sums_open and source_of(tier).raw:
            with engine.begin() as conn:
                engines.hold_tiers(conn, shared=False)
                sum_open(conn, tier, now + 1)


def _close(conn: Connection, tier: Tier, watermark: int, summed: int) -> None:
    """Make final the bucket in progress at ``watermark`` of ``tier`` (a tier summed from raw
    samples, whose bucket in progress has a table of its own), summed up to ``summed``: its
    rows and its samples since, in one grouped statement, into ``tier``'s table; the bucket's
    table left empty."""
    end = watermark + (tier.width or 0)
    o, table = in_progress(tier).table, tier.table
    held = select(*(o.c[name] for name in TIER_COLUMNS)).where(o.c.bucket == watermark)
    both = union_all(held, _source_select(tier, summed, end)).subquery("bucket")
    conn.execute(delete(table).where(table.c.bucket == watermark))  # none, unless left behind
    conn.execute(
        insert(table).from_select(
            list(TIER_COLUMNS),
            select(
                both.c.client_id,
                both.c.bucket,
                func.sum(both.c.bytes_received),
                func.sum(both.c.bytes_sent),
                func.sum(both.c.samples),
            ).group_by(both.c.client_id, both.c.bucket),
        )
    )
    conn.execute(delete(o))


def drop_open(conn: Connection, tier: Tier, watermark: int | None) -> None:
    """Delete the rows of ``tier``'s bucket in progress (at ``watermark``) where its open mark
    goes (``copy-to``): a day's row there would stay in its month's row (``stats_monthly``'s
    triggers), which readers take as holding only the days before the watermark without a
    mark. The 15-minute tier's row is never read without its mark, and is summed afresh."""
    if watermark is not None and tier.sums_open and not source_of(tier).raw:
        conn.execute(delete(tier.table).where(tier.table.c.bucket >= watermark))


# What a tier summed from final finer buckets (the day) sums: the 15-minute tier's final rows,
# at most this many of them (per client) a transaction.
FINAL_SOURCE = BY_NAME["quarter_hour"]
FINAL_STEP = 16


def _sum_final(
    conn: Connection, tier: Tier, watermark: int, summed: int | None, final: int | None
) -> int | None:
    """Sum into ``tier``'s bucket in progress (at ``watermark``) the final 15-minute buckets
    of it up to ``final`` (the 15-minute watermark), and move its open mark there: from the
    start of the bucket when it is not summed yet (``summed`` None: its row is replaced), else
    only the buckets after ``summed``. A 15-minute bucket is final once rolled up, so these
    rows hold every sample before the mark, late polls included (``fold_in`` adds a late poll
    to both tiers). Returns the mark (``summed`` where nothing was added)."""
    assert tier.width is not None and FINAL_SOURCE.width is not None
    if final is None or min(final, watermark + tier.width) <= (summed or watermark):
        return summed  # no 15-minute bucket of it final yet, or none since the mark
    # at most FINAL_STEP buckets a transaction, so that a poll never waits long for the tiers
    # (a day summed afresh at 15:15, 10,000 clients: 2.5 s in one); the row and its mark agree
    # at every commit, and the next runs sum the rest
    upto = min(
        final, watermark + tier.width, (summed or watermark) + FINAL_STEP * FINAL_SOURCE.width
    )
    if summed is None:
        conn.execute(delete(tier.table).where(tier.table.c.bucket == watermark))
    q = FINAL_SOURCE.table
    rows = conn.execute(
        select(
            q.c.client_id,
            literal(watermark, BigInteger),  # every row here is of that bucket
            func.sum(q.c.bytes_received),
            func.sum(q.c.bytes_sent),
            func.sum(q.c.samples),
        )
        .where(q.c.bucket >= (summed or watermark), q.c.bucket < upto)
        .group_by(q.c.client_id)
    ).all()
    _add(conn, tier, [tuple(row) for row in rows])
    meta.put(conn, meta.open_key(tier.name), str(upto))
    return upto


def _add_since(conn: Connection, tier: Tier, start: int, end: int) -> None:
    """Add the finer data in ``[start, end)`` to ``tier``'s rows (of one bucket: its samples
    before ``start`` are in them already), in one statement built once (after every poll, at
    10,000 clients: reading the sums into Python and building the statement each time took
    about as long as the database's work)."""
    _adding(tier, conn.dialect.name)(conn, start=start, end=end)


@lru_cache(maxsize=16)
def _adding(tier: Tier, dialect: str) -> statements.Prepared:
    """``_add_since``'s statement for ``tier`` on ``dialect``: the finer data in ``[start,
    end)`` (binds) grouped into ``tier``'s buckets and added to its rows."""
    source = _source_select(tier, bindparam("start"), bindparam("end"))
    columns = _columns(tier)
    keys, merge = _KEYS[tier.per_client], _MERGE[tier.per_client]
    return statements.Prepared(
        statements.upsert_from(dialect, tier.table, columns, source, keys, merge)
    )


def backfill(
    engine: Engine, start: int, end: int, tiers: list[str] | None = None
) -> list[RollupReport]:
    """Recompute the chosen tiers over ``[start, end)`` from the finest data still present.

    Buckets after a tier's watermark are left alone (the API reads them from finer data and the
    next rollup builds them). Hourly buckets before the oldest raw sample are kept as they are:
    their raw data is gone, and the hourly rows are now the finest data there is.
    """
    reports = []
    for tier in ROLLUPS:
        if tiers and tier.name not in tiers:
            continue
        assert tier.width is not None
        with engine.begin() as conn:
            engines.hold_tiers(conn, shared=False)
            stored = meta.watermarks(conn).get(tier.name)
            first = oldest(conn, source_of(tier))
        if stored is None or first is None:
            reports.append(RollupReport(tier.name, 0, stored))
            continue
        low = max(align(start, tier.width), align(first, tier.width))
        high = min(stored, align_up(end, tier.width))
        count = 0
        for bucket in range(low, high, tier.width):
            with engine.begin() as conn:
                engines.hold_tiers(conn, shared=False)
                rebuild(conn, tier, bucket, bucket + tier.width)
            count += 1
        reports.append(RollupReport(tier.name, count, stored))
    # a bucket in progress summed from finer final buckets, which may have changed: afresh,
    # up to the same mark, a slice a transaction
    for tier in ROLLUPS:
        if not tier.sums_open or source_of(tier).raw:
            continue
        with engine.connect() as conn:
            marks, opened = meta.rollup_marks(conn)
        watermark = marks.get(tier.name)
        if watermark is None or (target := _summed(tier, watermark, opened)) is None:
            continue
        summed: int | None = None
        while summed != target:
            with engine.begin() as conn:
                engines.hold_tiers(conn, shared=False)
                summed = _sum_final(conn, tier, watermark, summed, target)
    return reports
