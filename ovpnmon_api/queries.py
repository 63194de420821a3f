"""Every read the API makes: SQLAlchemy Core ``select()`` over the tables of ``ovpnmon_common``.

Functions take a connection (one transaction per request, so one consistent snapshot) and return
plain Python values; they know nothing of HTTP. Tiers are read up to their rollup watermark and
the finer data after it, so every series includes the bucket in progress.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, case, func, select

from ovpnmon_common import db, schema
from ovpnmon_common.buckets import Series
from ovpnmon_common.tiers import BY_NAME, watermark_key

c, s, u, g = schema.clients, schema.sessions, schema.usage_history, schema.global_history


# --- collector status -------------------------------------------------------------------------


@dataclass(frozen=True)
class CollectorStatus:
    heartbeat: int | None
    interval: int | None
    sources: dict[str, Any]
    watermarks: dict[str, int]


def collector_status(conn: Connection) -> CollectorStatus:
    """The collector's heartbeat, configured interval, per-source health and rollup watermarks."""
    entries = db.get_meta_prefix(conn, "")
    sources = {
        key[len("source.") : -len(".health")]: json.loads(value)
        for key, value in entries.items()
        if key.startswith("source.") and key.endswith(".health")
    }
    watermarks = {
        name: int(entries[watermark_key(name)])
        for name in BY_NAME
        if watermark_key(name) in entries
    }
    heartbeat = entries.get("collector.heartbeat")
    interval = entries.get("collector.interval")
    return CollectorStatus(
        heartbeat=int(heartbeat) if heartbeat else None,
        interval=int(interval) if interval else None,
        sources=sources,
        watermarks=watermarks,
    )


# --- clients ----------------------------------------------------------------------------------


def open_session_bytes():
    """Per client: counted bytes of its open sessions (counters minus baseline)."""
    return (
        select(
            s.c.client_id,
            func.sum(s.c.bytes_received - s.c.baseline_received).label("rx"),
            func.sum(s.c.bytes_sent - s.c.baseline_sent).label("tx"),
            func.count().label("sessions"),
            func.min(s.c.connected_since).label("connected_since"),
        )
        .where(s.c.disconnected_at.is_(None))
        .group_by(s.c.client_id)
        .subquery("open_sessions")
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


def _clients_query(status: CollectorStatus) -> Select[Any]:
    live = open_session_bytes()
    heartbeat = status.heartbeat if status.heartbeat is not None else -1
    last = (
        select(u.c.client_id, u.c.bytes_received, u.c.bytes_sent)
        .where(u.c.client_id.in_(select(c.c.id).where(c.c.active)), u.c.ts == heartbeat)
        .subquery("last_sample")
    )
    return (
        select(
            c.c.id,
            c.c.common_name,
            c.c.active,
            c.c.first_seen,
            c.c.last_seen,
            (c.c.closed_received + func.coalesce(live.c.rx, 0)).label("total_received"),
            (c.c.closed_sent + func.coalesce(live.c.tx, 0)).label("total_sent"),
            func.coalesce(live.c.sessions, 0).label("open_sessions"),
            live.c.connected_since,
            func.coalesce(last.c.bytes_received, 0).label("last_received"),
            func.coalesce(last.c.bytes_sent, 0).label("last_sent"),
        )
        .outerjoin(live, live.c.client_id == c.c.id)
        .outerjoin(last, last.c.client_id == c.c.id)
    )


def clients(conn: Connection, status: CollectorStatus) -> list[ClientRow]:
    """Every client ever seen, by common name."""
    rows = conn.execute(_clients_query(status).order_by(c.c.common_name))
    return [_client_row(row, status) for row in rows]


def client(conn: Connection, status: CollectorStatus, common_name: str) -> ClientRow | None:
    row = conn.execute(_clients_query(status).where(c.c.common_name == common_name)).first()
    return _client_row(row, status) if row is not None else None


def _client_row(row: Any, status: CollectorStatus) -> ClientRow:
    active = bool(row.active)
    last_seen = status.heartbeat if active and status.heartbeat else row.last_seen
    return ClientRow(
        id=row.id,
        common_name=row.common_name,
        active=active,
        first_seen=row.first_seen,
        last_seen=last_seen,
        total_received=int(row.total_received),
        total_sent=int(row.total_sent),
        open_sessions=int(row.open_sessions),
        connected_since=row.connected_since,
        last_received=int(row.last_received),
        last_sent=int(row.last_sent),
    )


def lifetime_totals(conn: Connection) -> dict[str, tuple[int, int, bool]]:
    """Every client's lifetime (bytes received, bytes sent, active)."""
    status = CollectorStatus(None, None, {}, {})
    return {
        row.common_name: (row.total_received, row.total_sent, row.active)
        for row in clients(conn, status)
    }


def open_sessions(conn: Connection, client_id: int) -> list[dict[str, Any]]:
    """A client's open sessions, oldest first."""
    rows = conn.execute(
        select(
            s.c.source,
            s.c.real_address,
            s.c.virtual_address,
            s.c.virtual_ipv6,
            s.c.connected_since,
            (s.c.bytes_received - s.c.baseline_received).label("rx"),
            (s.c.bytes_sent - s.c.baseline_sent).label("tx"),
        )
        .where(s.c.client_id == client_id, s.c.disconnected_at.is_(None))
        .order_by(s.c.connected_since)
    )
    return [dict(row._mapping) for row in rows]


def last_interval(conn: Connection, status: CollectorStatus) -> float:
    """The monotonic length of the collector's last poll interval (0 when unknown)."""
    if status.heartbeat is None:
        return 0.0
    value = conn.execute(select(g.c.interval).where(g.c.ts == status.heartbeat)).scalar()
    return float(value or 0.0)


def system_totals(conn: Connection) -> dict[str, int]:
    live = open_session_bytes()
    row = conn.execute(
        select(
            func.count(c.c.id),
            func.coalesce(func.sum(case((c.c.active, 1), else_=0)), 0),
            func.coalesce(func.sum(c.c.closed_received + func.coalesce(live.c.rx, 0)), 0),
            func.coalesce(func.sum(c.c.closed_sent + func.coalesce(live.c.tx, 0)), 0),
        ).outerjoin(live, live.c.client_id == c.c.id)
    ).one()
    return {"clients": row[0], "active": row[1], "received": int(row[2]), "sent": int(row[3])}


# --- series -----------------------------------------------------------------------------------

Sums = dict[int, list[int]]  # bucket (or client id) -> [bytes received, bytes sent]


def client_series(
    conn: Connection, status: CollectorStatus, client_id: int, series: Series
) -> Sums:
    """Per bucket of ``series``: the client's bytes, from its tier and the finer data after it."""
    assert series.step is not None
    out: Sums = defaultdict(lambda: [0, 0])
    _tier_sums(
        conn, status, series.tier.name, series.start, series.end, series.step, out, client_id
    )
    return out


def client_samples(
    conn: Connection, client_id: int, start: int, end: int
) -> list[tuple[int, int, int, float]]:
    """Raw samples (ts, rx, tx, poll interval) in ``[start, end)``, oldest first."""
    rows = conn.execute(
        select(u.c.ts, u.c.bytes_received, u.c.bytes_sent, func.coalesce(g.c.interval, 0.0))
        .outerjoin(g, g.c.ts == u.c.ts)
        .where(u.c.client_id == client_id, u.c.ts >= start, u.c.ts < end)
        .order_by(u.c.ts)
    )
    return [(ts, rx, tx, float(interval)) for ts, rx, tx, interval in rows]


def top_clients(
    conn: Connection, status: CollectorStatus, start: int, end: int, limit: int = 10
) -> list[tuple[str, int, int]]:
    """The ``limit`` CNs with most bytes (both directions) in ``[start, end)``."""
    per_client: Sums = defaultdict(lambda: [0, 0])
    # the coarsest tier first: whole days from stats_daily, the edges from finer tiers
    _tier_sums(conn, status, "daily", start, end, None, per_client, None)
    ranked = sorted(per_client.items(), key=lambda item: (-(item[1][0] + item[1][1]), item[0]))
    ranked = [item for item in ranked if item[1][0] + item[1][1] > 0][:limit]
    if not ranked:
        return []
    names = dict(
        conn.execute(
            select(c.c.id, c.c.common_name).where(c.c.id.in_([i for i, _ in ranked]))
        ).all()
    )
    return [(names[cid], rx, tx) for cid, (rx, tx) in ranked]


def _tier_sums(
    conn: Connection,
    status: CollectorStatus,
    tier: str,
    start: int,
    end: int,
    step: int | None,
    out: Sums,
    client_id: int | None,
) -> None:
    """Add the bytes of ``[start, end)`` to ``out``, keyed by ``step`` bucket (or, with ``step``
    None, by client): whole tier buckets before its watermark from the tier's table, the rest
    (edges and the buckets not yet final) from the next finer tier, down to raw samples."""
    if start >= end:
        return
    if tier == "raw":
        _raw_sums(conn, start, end, step, out, client_id)
        return
    rollup = BY_NAME[tier]
    width = rollup.width
    first = -(-start // width) * width  # first whole bucket inside the range
    final = min(status.watermarks.get(tier, first), (end // width) * width)
    if first < final:
        t = rollup.table
        key = t.c.client_id if step is None else (t.c.bucket - t.c.bucket % step)
        query = (
            select(key.label("key"), func.sum(t.c.bytes_received), func.sum(t.c.bytes_sent))
            .where(t.c.bucket >= first, t.c.bucket < final)
            .group_by(key)
        )
        if client_id is not None:
            query = query.where(t.c.client_id == client_id)
        for k, rx, tx in conn.execute(query):
            out[k][0] += rx
            out[k][1] += tx
    else:
        first = final = start
    finer = rollup.finer or "raw"
    _tier_sums(conn, status, finer, start, first, step, out, client_id)
    _tier_sums(conn, status, finer, max(final, start), end, step, out, client_id)


def _raw_sums(
    conn: Connection, start: int, end: int, step: int | None, out: Sums, client_id: int | None
) -> None:
    key = u.c.client_id if step is None else (u.c.ts - u.c.ts % step)
    query = (
        select(key.label("key"), func.sum(u.c.bytes_received), func.sum(u.c.bytes_sent))
        .where(u.c.ts >= start, u.c.ts < end)
        .group_by(key)
    )
    if client_id is not None:
        query = query.where(u.c.client_id == client_id)
    else:  # drive from the clients into the (client_id, ts) key: there is no index on ts alone
        query = query.where(u.c.client_id.in_(select(c.c.id)))
    for k, rx, tx in conn.execute(query):
        out[k][0] += rx
        out[k][1] += tx


def global_series(
    conn: Connection, status: CollectorStatus, series: Series
) -> dict[int, list[int]]:
    """Per bucket: [bytes received, bytes sent, peak concurrent CNs] for the whole server."""
    assert series.step is not None
    step = series.step
    out: dict[int, list[int]] = defaultdict(lambda: [0, 0, 0])
    wm = min(status.watermarks.get("global_15min", series.start), series.end)
    wm = max(wm, series.start)
    t = schema.global_15min
    parts: Sequence[tuple[Any, Any, Any, Any, int, int]] = (
        (t.c.bucket, t.c.bytes_received, t.c.bytes_sent, t.c.max_active, series.start, wm),
        (g.c.ts, g.c.bytes_received, g.c.bytes_sent, g.c.active_count, wm, series.end),
    )
    for when, rx, tx, active, low, high in parts:
        if low >= high:
            continue
        key = (when - when % step).label("key")
        query = (
            select(key, func.sum(rx), func.sum(tx), func.max(active))
            .where(when >= low, when < high)
            .group_by(key)
        )
        for k, srx, stx, peak in conn.execute(query):
            entry = out[k]
            entry[0] += srx
            entry[1] += stx
            entry[2] = max(entry[2], peak or 0)
    return out


def certificates(conn: Connection) -> list[dict[str, Any]]:
    t = schema.certificates
    rows = conn.execute(select(t).order_by(t.c.not_after, t.c.file))
    return [dict(row._mapping) for row in rows]
