"""Every read the API makes: SQLAlchemy Core ``select()`` over the tables of ``ovpnmon_common``.

Statements are built once, at import, with ``bindparam()`` placeholders and run as
``db.Prepared`` (compiled once per process): a request pays for SQLite's work and its rows, not
for rebuilding queries. Functions take a connection (one transaction per request, so one
consistent snapshot) and return plain Python values; they know nothing of HTTP. Tiers are read up
to their rollup watermark and the finer data after it, so every series includes the bucket in
progress.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Select, bindparam, case, func, select, union_all

from ovpnmon_common import schema
from ovpnmon_common.buckets import Series, align, align_up
from ovpnmon_common.counters import Counters
from ovpnmon_common.db import Prepared
from ovpnmon_common.tiers import BY_NAME, sql_align, watermark_key

c, s, u, g = schema.clients, schema.sessions, schema.usage_history, schema.global_history
sc = schema.session_counters

# --- collector status -------------------------------------------------------------------------

META = Prepared(select(schema.meta.c.key, schema.meta.c.value))


@dataclass(frozen=True)
class CollectorStatus:
    heartbeat: int | None
    interval: int | None
    sources: dict[str, Any]
    watermarks: dict[str, int]


def collector_status(conn: Connection) -> CollectorStatus:
    """The collector's heartbeat, configured interval, per-source health and rollup watermarks."""
    entries = dict(META(conn).all())
    sources = {
        key[len("source.") : -len(".health")]: json.loads(value)
        for key, value in entries.items()
        if key.startswith("source.") and key.endswith(".health")
    }
    marks = {name: entries.get(watermark_key(name)) for name in BY_NAME}
    heartbeat = entries.get("collector.heartbeat")
    interval = entries.get("collector.interval")
    return CollectorStatus(
        heartbeat=int(heartbeat) if heartbeat else None,
        interval=int(interval) if interval else None,
        sources=sources,
        watermarks={name: int(mark) for name, mark in marks.items() if mark is not None},
    )


# --- clients ----------------------------------------------------------------------------------


# Open sessions' counters live in one packed row per source (ovpnmon_common.counters), rewritten
# by every poll; a session without an entry there keeps the counters of its sessions row. Rows
# that _counted reads start with these columns, in this order.
_COUNTED = (
    s.c.id,
    s.c.source,
    s.c.bytes_received,
    s.c.bytes_sent,
    s.c.baseline_received,
    s.c.baseline_sent,
)
OPEN_ALL = Prepared(
    select(*_COUNTED, s.c.client_id, s.c.connected_since).where(s.c.disconnected_at.is_(None))
)
ALL_COUNTERS = Prepared(select(sc.c.source, sc.c.counters))
SOURCE_COUNTERS = Prepared(select(sc.c.counters).where(sc.c.source == bindparam("source")))


def _counted(conn: Connection, rows: list[Any], every_source: bool) -> list[tuple[int, int]]:
    """Counted bytes (counters now minus baseline) of each open session row, in order."""
    if every_source:
        current = {
            (source, session): value
            for source, data in ALL_COUNTERS(conn)
            for session, value in Counters(data).items()
        }
    else:  # a few sessions: look each up in its source's counters, read once per source
        found = {}
        for source in {source for _, source, *_ in rows}:
            data = SOURCE_COUNTERS(conn, source=source).scalar()
            if data is not None:
                found[source] = Counters(data)
        current = {}
        for session, source, *_ in rows:
            value = found[source].get(session) if source in found else None
            if value is not None:
                current[(source, session)] = value
    counted = []
    for session, source, rx, tx, base_rx, base_tx, *_ in rows:
        rx, tx = current.get((source, session), (rx, tx))
        counted.append((rx - base_rx, tx - base_tx))
    return counted


def _live(conn: Connection) -> dict[int, tuple[int, int, int, int]]:
    """client id -> (bytes received, bytes sent, open sessions, earliest connected since) of its
    open sessions."""
    rows = OPEN_ALL(conn).all()
    live: dict[int, tuple[int, int, int, int]] = {}
    for row, (rx, tx) in zip(rows, _counted(conn, rows, every_source=True), strict=True):
        client, since = row[-2], row[-1]
        before = live.get(client)
        if before is None:
            live[client] = (rx, tx, 1, since)
        else:
            live[client] = (before[0] + rx, before[1] + tx, before[2] + 1, min(before[3], since))
    return live


def _clients_select() -> Select[Any]:
    last = (
        select(u.c.client_id, u.c.bytes_received, u.c.bytes_sent)
        .where(
            u.c.client_id.in_(select(c.c.id).where(c.c.active)),
            u.c.ts == bindparam("heartbeat"),
        )
        .subquery("last_sample")
    )
    return select(
        c.c.id,
        c.c.common_name,
        c.c.active,
        c.c.first_seen,
        c.c.last_seen,
        c.c.closed_received,
        c.c.closed_sent,
        func.coalesce(last.c.bytes_received, 0).label("last_received"),
        func.coalesce(last.c.bytes_sent, 0).label("last_sent"),
    ).outerjoin(last, last.c.client_id == c.c.id)


ALL_CLIENTS = Prepared(_clients_select().order_by(c.c.common_name))
ONE_CLIENT = Prepared(select(c).where(c.c.common_name == bindparam("name")))
LAST_SAMPLE = Prepared(
    select(u.c.bytes_received, u.c.bytes_sent).where(
        u.c.client_id == bindparam("client_id"), u.c.ts == bindparam("ts")
    )
)


@dataclass(frozen=True)
class ClientRow:
    id: int
    common_name: str
    active: bool
    first_seen: int
    last_seen: int
    total_received: int
    total_sent: int
    open_sessions: int
    connected_since: int | None
    last_received: int  # bytes in the collector's last poll
    last_sent: int


def clients(conn: Connection, status: CollectorStatus) -> list[ClientRow]:
    """Every client ever seen, by common name."""
    live = _live(conn)
    return [
        _client_row(row, status, live.get(row.id, (0, 0, 0, None)))
        for row in ALL_CLIENTS(conn, heartbeat=_heartbeat(status))
    ]


def client(
    conn: Connection, status: CollectorStatus, common_name: str
) -> tuple[ClientRow, list[dict[str, Any]]] | None:
    """One client and its open sessions (oldest first), by key lookups only."""
    row = ONE_CLIENT(conn, name=common_name).first()
    if row is None:
        return None
    sessions = open_sessions(conn, row.id)
    last = (
        LAST_SAMPLE(conn, client_id=row.id, ts=_heartbeat(status)).first() if row.active else None
    )
    live = (
        sum(x["rx"] for x in sessions),
        sum(x["tx"] for x in sessions),
        len(sessions),
        sessions[0]["connected_since"] if sessions else None,
    )
    return (
        _client_row(row, status, live, last_sample=tuple(last) if last else (0, 0)),
        sessions,
    )


def _heartbeat(status: CollectorStatus) -> int:
    return status.heartbeat if status.heartbeat is not None else -1


def _client_row(
    row: Any,
    status: CollectorStatus,
    live: tuple[int, int, int, int | None],
    last_sample: tuple[int, int] | None = None,
) -> ClientRow:
    """A clients row plus its open sessions' (received, sent, count, earliest connected since)."""
    active = bool(row.active)
    last_received, last_sent = (
        last_sample if last_sample is not None else (row.last_received, row.last_sent)
    )
    return ClientRow(
        id=row.id,
        common_name=row.common_name,
        active=active,
        first_seen=row.first_seen,
        last_seen=status.heartbeat if active and status.heartbeat else row.last_seen,
        total_received=row.closed_received + live[0],
        total_sent=row.closed_sent + live[1],
        open_sessions=live[2],
        connected_since=live[3],
        last_received=int(last_received),
        last_sent=int(last_sent),
    )


CLIENT_STATUS = Prepared(select(c.c.common_name, c.c.active).order_by(c.c.common_name))


def client_status(conn: Connection) -> list[tuple[str, bool]]:
    """(common name, active) of every client, by name: all that /clients needs."""
    return [(name, bool(active)) for name, active in CLIENT_STATUS(conn)]


def lifetime_totals(conn: Connection) -> dict[str, tuple[int, int, bool]]:
    """Every client's lifetime (bytes received, bytes sent, active)."""
    status = CollectorStatus(None, None, {}, {})
    return {
        row.common_name: (row.total_received, row.total_sent, row.active)
        for row in clients(conn, status)
    }


OPEN_SESSIONS = Prepared(
    select(
        *_COUNTED,
        s.c.real_address,
        s.c.virtual_address,
        s.c.virtual_ipv6,
        s.c.connected_since,
    )
    .where(s.c.client_id == bindparam("client_id"), s.c.disconnected_at.is_(None))
    .order_by(s.c.connected_since, s.c.id)
)


def open_sessions(conn: Connection, client_id: int) -> list[dict[str, Any]]:
    """A client's open sessions, oldest first: source, addresses, connected since, and the bytes
    counted for it (rx, tx)."""
    rows = OPEN_SESSIONS(conn, client_id=client_id).all()
    return [
        {
            "source": row.source,
            "real_address": row.real_address,
            "virtual_address": row.virtual_address,
            "virtual_ipv6": row.virtual_ipv6,
            "connected_since": row.connected_since,
            "rx": rx,
            "tx": tx,
        }
        for row, (rx, tx) in zip(rows, _counted(conn, rows, every_source=False), strict=True)
    ]


LAST_INTERVAL = Prepared(select(g.c.interval).where(g.c.ts == bindparam("ts")))


def last_interval(conn: Connection, status: CollectorStatus) -> float:
    """The monotonic length of the collector's last poll interval (0 when unknown)."""
    if status.heartbeat is None:
        return 0.0
    return float(LAST_INTERVAL(conn, ts=status.heartbeat).scalar() or 0.0)


SYSTEM = Prepared(
    select(
        func.count(c.c.id),
        func.coalesce(func.sum(case((c.c.active, 1), else_=0)), 0),
        func.coalesce(func.sum(c.c.closed_received), 0),
        func.coalesce(func.sum(c.c.closed_sent), 0),
    )
)


def system_totals(conn: Connection) -> dict[str, int]:
    row = SYSTEM(conn).one()
    live = _live(conn).values()
    return {
        "clients": row[0],
        "active": row[1],
        "received": int(row[2]) + sum(x[0] for x in live),
        "sent": int(row[3]) + sum(x[1] for x in live),
    }


# --- series -----------------------------------------------------------------------------------

Sums = dict[int, list[int]]  # bucket -> [bytes received, bytes sent]


# Raw samples are keyed (ts, client_id). One client's samples in [start, end) are found by one
# key seek per poll time, and every poll writes a global_history row beside its samples: ``ts IN
# (poll times)`` makes SQLite do exactly that, instead of reading every client's samples.
_POLL_TIMES = select(g.c.ts).where(g.c.ts >= bindparam("start"), g.c.ts < bindparam("end"))


def _client_sums(table: Any, time_column: str) -> Prepared:
    """One client's bytes in ``[start, end)`` grouped by ``step`` bucket."""
    when = table.c[time_column]
    key = sql_align(when, bindparam("step")).label("key")
    if table is u:
        where = [u.c.client_id == bindparam("client_id"), u.c.ts.in_(_POLL_TIMES)]
    else:
        where = [
            table.c.client_id == bindparam("client_id"),
            when >= bindparam("start"),
            when < bindparam("end"),
        ]
    sums = select(key, func.sum(table.c.bytes_received), func.sum(table.c.bytes_sent))
    return Prepared(sums.where(*where).group_by(key))


_TIER_TABLES = {"raw": (u, "ts"), **{name: (r.table, "bucket") for name, r in BY_NAME.items()}}
CLIENT_SUMS = {
    tier: _client_sums(table, column)
    for tier, (table, column) in _TIER_TABLES.items()
    if tier != "global_15min"
}


def client_series(
    conn: Connection, status: CollectorStatus, client_id: int, series: Series
) -> Sums:
    """Per bucket of ``series``: the client's bytes, from its tier and the finer data after it."""
    assert series.step is not None
    out: Sums = defaultdict(lambda: [0, 0])
    tier = series.tier.name
    if tier == "raw" and series.step % BY_NAME["quarter_hour"].width == 0:
        # whole 15-minute buckets of raw samples are already summed (exactly) in stats_15min
        tier = "quarter_hour"
    for piece, first, last in _pieces(status, tier, series.start, series.end):
        query = CLIENT_SUMS[piece]
        for key, rx, tx in query(
            conn, client_id=client_id, start=first, end=last, step=series.step
        ):
            entry = out[key]
            entry[0] += rx
            entry[1] += tx
    return out


CLIENT_SAMPLES = Prepared(
    select(
        u.c.ts,
        u.c.bytes_received,
        u.c.bytes_sent,
        select(g.c.interval).where(g.c.ts == u.c.ts).scalar_subquery(),
    )
    .where(u.c.client_id == bindparam("client_id"), u.c.ts.in_(_POLL_TIMES))
    .order_by(u.c.ts)
)


def client_samples(
    conn: Connection, client_id: int, start: int, end: int
) -> list[tuple[int, int, int, float]]:
    """Raw samples (ts, rx, tx, poll interval) in ``[start, end)``, oldest first."""
    rows = CLIENT_SAMPLES(conn, client_id=client_id, start=start, end=end)
    return [(ts, rx, tx, float(interval)) for ts, rx, tx, interval in rows]


def top_clients(
    conn: Connection, status: CollectorStatus, start: int, end: int, limit: int = 10
) -> list[tuple[str, int, int]]:
    """The ``limit`` CNs with most bytes (both directions) in ``[start, end)``, most first (ties
    by client id): every client's sums over the range's pieces (whole days from stats_daily, the
    edges from finer tiers) merged and ranked by SQLite in one statement, so only ``limit`` rows
    come back. Clients without a byte in the range are left out."""
    pieces = list(_pieces(status, "daily", start, end))
    if not pieces:
        return []
    params: dict[str, Any] = {"limit": limit}
    for i, (_, first, last) in enumerate(pieces):
        params[f"start_{i}"], params[f"end_{i}"] = first, last
    ranked = _top_statement(tuple(tier for tier, _, _ in pieces))(conn, **params)
    return [(name, int(rx), int(tx)) for name, rx, tx in ranked]


@lru_cache(maxsize=64)
def _top_statement(tiers: tuple[str, ...]) -> Prepared:
    """Per client sums of every piece (UNION ALL), summed again, ranked, limited."""
    parts = []
    for i, tier in enumerate(tiers):
        table, column = _TIER_TABLES[tier]
        when = table.c[column]
        where = [when >= bindparam(f"start_{i}"), when < bindparam(f"end_{i}")]
        if table is not u:
            # Drive from the clients into each tier's (client_id, bucket) key: one short range
            # per client, read in key order, instead of the (bucket) index plus a key lookup per
            # row (28 days of stats_daily for 1,000 clients: 6 ms against 37 ms).
            where.append(table.c.client_id.in_(select(c.c.id)))
        parts.append(
            select(
                table.c.client_id.label("client_id"),
                func.sum(table.c.bytes_received).label("rx"),
                func.sum(table.c.bytes_sent).label("tx"),
            )
            .where(*where)
            .group_by(table.c.client_id)
        )
    pieces = union_all(*parts).subquery("pieces")
    rx, tx = func.sum(pieces.c.rx), func.sum(pieces.c.tx)
    return Prepared(
        select(c.c.common_name, rx, tx)
        .join(c, c.c.id == pieces.c.client_id)
        .group_by(pieces.c.client_id, c.c.common_name)
        .having(rx + tx > 0)
        .order_by((rx + tx).desc(), pieces.c.client_id)
        .limit(bindparam("limit"))
    )


def _pieces(
    status: CollectorStatus, tier: str, start: int, end: int
) -> Iterator[tuple[str, int, int]]:
    """``[start, end)`` as (tier, start, end) pieces: whole tier buckets before the tier's
    watermark from the tier's table, the rest (edges and the buckets not yet final) from the
    next finer tier, down to raw samples."""
    if start >= end:
        return
    if tier == "raw":
        yield tier, start, end
        return
    rollup = BY_NAME[tier]
    width = rollup.width
    first = align_up(start, width)  # the first whole bucket inside the range
    final = min(status.watermarks.get(tier, first), align(end, width))
    if first < final:
        yield tier, first, final
    else:
        first = final = start
    finer = rollup.finer or "raw"
    yield from _pieces(status, finer, start, first)
    yield from _pieces(status, finer, max(final, start), end)


def _global(when: Any, rx: Any, tx: Any, active: Any) -> Prepared:
    key = sql_align(when, bindparam("step")).label("key")
    return Prepared(
        select(key, func.sum(rx), func.sum(tx), func.max(active))
        .where(when >= bindparam("start"), when < bindparam("end"))
        .group_by(key)
    )


_t15 = schema.global_15min
GLOBAL_TIER = _global(_t15.c.bucket, _t15.c.bytes_received, _t15.c.bytes_sent, _t15.c.max_active)
GLOBAL_RAW = _global(g.c.ts, g.c.bytes_received, g.c.bytes_sent, g.c.active_count)


def global_series(
    conn: Connection, status: CollectorStatus, series: Series
) -> dict[int, list[int]]:
    """Per bucket: [bytes received, bytes sent, peak concurrent CNs] for the whole server."""
    assert series.step is not None
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    wm = max(min(status.watermarks.get("global_15min", series.start), series.end), series.start)
    for query, low, high in ((GLOBAL_TIER, series.start, wm), (GLOBAL_RAW, wm, series.end)):
        if low >= high:
            continue
        for k, rx, tx, peak in query(conn, step=series.step, start=low, end=high):
            entry = out[k]
            entry[0] += rx
            entry[1] += tx
            entry[2] = max(entry[2], peak or 0)
    return out


CERTIFICATES = Prepared(
    select(schema.certificates).order_by(
        schema.certificates.c.not_after, schema.certificates.c.file
    )
)


def certificates(conn: Connection) -> list[dict[str, Any]]:
    return [dict(row._mapping) for row in CERTIFICATES(conn)]
