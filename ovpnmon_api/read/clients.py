"""Clients: who was ever seen, who is connected now, their open sessions and lifetime totals
(the rule is ``ovpnmon_common.totals``), and the collector's last poll for current rates."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, and_, bindparam, case, func, select

from ovpnmon_common import schema, totals
from ovpnmon_common.meta import CollectorStatus
from ovpnmon_common.storage.statements import Prepared, plain_rows

c, s, u, g, h = (
    schema.clients,
    schema.sessions,
    schema.usage_history,
    schema.global_history,
    schema.hosts,
)

_COLUMNS = (
    c.c.id,
    c.c.common_name,
    c.c.host_id,
    c.c.active,
    c.c.first_seen,
    c.c.last_seen,
    c.c.closed_received,
    c.c.closed_sent,
)
ALL_CLIENTS = Prepared(select(*_COLUMNS).order_by(c.c.common_name, c.c.host_id))
HOST_CLIENTS = Prepared(
    select(*_COLUMNS)
    .where(c.c.host_id == bindparam("host_id"))
    .order_by(c.c.common_name, c.c.host_id)
)
ONE_CLIENT = Prepared(
    select(*_COLUMNS).where(c.c.common_name == bindparam("name")).order_by(c.c.host_id)
)
# Every active client's raw sample at its host's last poll: what current rates are made of.
# "ts IN (the heartbeats)" has SQLite read each last poll's samples as one run of the raw
# samples' key; alone, the join makes it look every client up there (8 vs 10 ms at 10,000).
LAST_SAMPLES = Prepared(
    select(u.c.client_id, u.c.bytes_received, u.c.bytes_sent)
    .join(c, c.c.id == u.c.client_id)
    .join(h, h.c.id == c.c.host_id)
    .where(c.c.active, u.c.ts == h.c.heartbeat, u.c.ts.in_(select(h.c.heartbeat)))
)
# One client's rows (one per host it was seen on), each with its current rate's makings: an
# active row's raw sample at its host's last poll and that poll's interval (key seeks).
NAMED_CLIENT = Prepared(
    select(
        *_COLUMNS,
        u.c.bytes_received.label("last_received"),
        u.c.bytes_sent.label("last_sent"),
        g.c.interval.label("last_interval"),
    )
    .join(h, h.c.id == c.c.host_id)
    .outerjoin(u, and_(c.c.active, u.c.ts == h.c.heartbeat, u.c.client_id == c.c.id))
    .outerjoin(g, and_(c.c.active, g.c.ts == h.c.heartbeat, g.c.host_id == h.c.id))
    .where(c.c.common_name == bindparam("name"))
    .order_by(c.c.host_id)
)
# Each host's last poll interval (monotonic seconds; 0 for a first poll after a start): one
# key seek per host, from the hosts (a join may start from global_history and read all of it).
LAST_INTERVALS = Prepared(
    select(
        h.c.id,
        select(g.c.interval)
        .where(g.c.ts == h.c.heartbeat, g.c.host_id == h.c.id)
        .scalar_subquery(),
    )
)


class ClientRow(NamedTuple):
    """One client (a common name, on every host or on one) as the API shows it (a tuple:
    ``/stats`` builds one per client)."""

    common_name: str
    active: bool
    first_seen: int
    last_seen: int
    total_received: int
    total_sent: int
    open_sessions: int
    connected_since: int | None
    rate_received: float  # bytes a second over its hosts' last poll intervals, summed
    rate_sent: float


@dataclass(frozen=True)
class OpenSession:
    """One open session and the bytes counted for it so far."""

    source: str
    real_address: str | None
    virtual_address: str | None
    virtual_ipv6: str | None
    connected_since: int
    received: int
    sent: int


def clients(
    conn: Connection, status: CollectorStatus, host_id: int | None = None
) -> list[ClientRow]:
    """Every client ever seen (on host ``host_id``, or on any), by common name."""
    live = totals.live(conn)
    last = {cid: (rx, tx) for cid, rx, tx in plain_rows(LAST_SAMPLES(conn))}
    heartbeats = status.heartbeats()
    polls = {
        host: (heartbeats.get(host), seconds) for host, seconds in last_intervals(conn).items()
    }
    rows = HOST_CLIENTS(conn, host_id=host_id) if host_id is not None else ALL_CLIENTS(conn)
    return _client_rows(plain_rows(rows), polls, live, last)


def client(
    conn: Connection, status: CollectorStatus, common_name: str, host_id: int | None = None
) -> tuple[ClientRow, list[OpenSession]] | None:
    """One client (on ``host_id``, or on every host) and its open sessions (oldest first):
    a few statements whatever the number of hosts (each a round trip on PostgreSQL)."""
    rows = [
        row
        for row in NAMED_CLIENT(conn, name=common_name)
        if host_id is None or row.host_id == host_id
    ]
    if not rows:
        return None
    kept = {row.id for row in rows}
    heartbeats = status.heartbeats()
    sessions: dict[int, list[OpenSession]] = {}
    for client_id, session in named_open_sessions(conn, common_name):
        if client_id in kept:
            sessions.setdefault(client_id, []).append(session)
    live = {}
    for cid, mine in sessions.items():
        live[cid] = totals.Live(
            sum(x.received for x in mine),
            sum(x.sent for x in mine),
            len(mine),
            mine[0].connected_since,
        )
    # only active rows have a last sample and interval
    last = {row.id: (row.last_received or 0, row.last_sent or 0) for row in rows}
    polls = {
        row.host_id: (heartbeats.get(row.host_id), float(row.last_interval or 0.0)) for row in rows
    }
    (merged,) = _client_rows([tuple(row)[:8] for row in rows], polls, live, last)
    every = [x for row in rows for x in sessions.get(row.id, [])]
    every.sort(key=lambda x: x.connected_since)
    return merged, every


def _client_rows(
    rows: Iterable[tuple[Any, ...]],
    polls: Mapping[int, tuple[int | None, float]],
    live: Mapping[int, totals.Live],
    last: Mapping[int, tuple[int, int]],
) -> list[ClientRow]:
    """``clients`` rows (the columns of ``_COLUMNS``, by common name) as the API shows them,
    with their open sessions (``live``), their raw samples at their host's last poll
    (``last``) and that poll's (time, interval) by host (``polls``); a name's rows on several
    hosts are merged into one client.

    One loop without a call per row: ``/stats`` runs it for every client (10 ms at 10,000
    clients, against 20 with a function building each row)."""
    found: list[ClientRow] = []
    previous = None
    no_poll: tuple[int | None, float] = (None, 0.0)
    for cid, name, host, active, first_seen, seen, closed_rx, closed_tx in rows:
        heartbeat, interval = polls.get(host, no_poll)
        received, sent, count, since = live.get(cid, totals.NOT_CONNECTED)
        rate_rx = rate_tx = 0.0
        if active:
            active = True
            seen = totals.last_seen(seen, active, heartbeat)
            if interval > 0:
                last_rx, last_tx = last.get(cid, (0, 0))
                rate_rx, rate_tx = last_rx / interval, last_tx / interval
        else:
            active = False
        part = _new(
            ClientRow,
            (
                name,
                active,
                first_seen,
                seen,
                closed_rx + received,
                closed_tx + sent,
                count,
                since,
                rate_rx,
                rate_tx,
            ),
        )
        if name == previous:
            found[-1] = merge(found[-1], part)
        else:
            found.append(part)
            previous = name
    return found


# tuple.__new__: a NamedTuple's own __new__ is Python code, a quarter of _client_rows' time
_new = tuple.__new__


def merge(one: ClientRow, other: ClientRow) -> ClientRow:
    """One common name's rows of two hosts as one client: bytes and rates add up, it is
    active where either is, seen first and last as the earliest and latest of them."""
    since = [x for x in (one.connected_since, other.connected_since) if x is not None]
    return ClientRow(
        common_name=one.common_name,
        active=one.active or other.active,
        first_seen=min(one.first_seen, other.first_seen),
        last_seen=max(one.last_seen, other.last_seen),
        total_received=one.total_received + other.total_received,
        total_sent=one.total_sent + other.total_sent,
        open_sessions=one.open_sessions + other.open_sessions,
        connected_since=min(since) if since else None,
        rate_received=one.rate_received + other.rate_received,
        rate_sent=one.rate_sent + other.rate_sent,
    )


def last_intervals(conn: Connection) -> dict[int, float]:
    """Host id -> the monotonic length of its collector's last poll interval (0: unknown)."""
    return {host: float(seconds or 0.0) for host, seconds in LAST_INTERVALS(conn)}


_ANY_ACTIVE = func.max(case((c.c.active, 1), else_=0))
CLIENT_STATUS = Prepared(
    select(c.c.common_name, _ANY_ACTIVE).group_by(c.c.common_name).order_by(c.c.common_name)
)
HOST_CLIENT_STATUS = Prepared(
    select(c.c.common_name, c.c.active)
    .where(c.c.host_id == bindparam("host_id"))
    .order_by(c.c.common_name)
)


def client_status(conn: Connection, host_id: int | None = None) -> list[tuple[str, bool]]:
    """(common name, active on any host or on ``host_id``) of every client, by name: all that
    /clients needs."""
    rows = HOST_CLIENT_STATUS(conn, host_id=host_id) if host_id is not None else CLIENT_STATUS(conn)
    return [(name, bool(active)) for name, active in rows]


NAMED_OPEN_SESSIONS = Prepared(
    select(
        *totals.COUNTED,
        s.c.real_address,
        s.c.virtual_address,
        s.c.virtual_ipv6,
        s.c.connected_since,
        s.c.client_id,
        totals.CARRIED_COUNTERS,
    )
    .where(
        s.c.client_id.in_(select(c.c.id).where(c.c.common_name == bindparam("name"))),
        s.c.disconnected_at.is_(None),
    )
    .order_by(s.c.connected_since, s.c.id)
)


def named_open_sessions(conn: Connection, common_name: str) -> list[tuple[int, OpenSession]]:
    """(client id, session) of every open session of the client called ``common_name`` (on
    every host), oldest first."""
    rows = NAMED_OPEN_SESSIONS(conn, name=common_name).all()
    return [
        (
            row.client_id,
            OpenSession(
                source=row.source,
                real_address=row.real_address,
                virtual_address=row.virtual_address,
                virtual_ipv6=row.virtual_ipv6,
                connected_since=row.connected_since,
                received=rx,
                sent=tx,
            ),
        )
        for row, (rx, tx) in zip(rows, totals.counted_carried(rows), strict=True)
    ]


SOURCE_COUNTS = Prepared(
    select(s.c.host_id, s.c.source, func.count(func.distinct(s.c.client_id)), func.count())
    .where(s.c.disconnected_at.is_(None))
    .group_by(s.c.host_id, s.c.source)
)


def source_counts(conn: Connection, status: CollectorStatus) -> dict[str, tuple[int, int]]:
    """Per source (named as ``status.sources`` names it): (clients, sessions) open now."""
    return {
        status.source_name(host, source): (clients, count)
        for host, source, clients, count in SOURCE_COUNTS(conn)
    }


HOST_COUNTS = Prepared(
    select(
        c.c.host_id, func.count(), func.coalesce(func.sum(case((c.c.active, 1), else_=0)), 0)
    ).group_by(c.c.host_id)
)


def host_counts(conn: Connection) -> dict[int, tuple[int, int]]:
    """Per host id: (clients ever seen there, clients connected there now)."""
    return {host: (int(seen), int(active)) for host, seen, active in HOST_COUNTS(conn)}
