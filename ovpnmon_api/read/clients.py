"""Clients: who was ever seen, who is connected now, their open sessions and lifetime totals
(the rule is ``ovpnmon_common.totals``), and the collector's last poll for current rates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Select, bindparam, func, select

from ovpnmon_common import schema, totals
from ovpnmon_common.meta import CollectorStatus
from ovpnmon_common.storage.statements import Prepared

c, s, u, g = schema.clients, schema.sessions, schema.usage_history, schema.global_history


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
    """One client as the API shows it."""

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


def clients(conn: Connection, status: CollectorStatus) -> list[ClientRow]:
    """Every client ever seen, by common name."""
    live = totals.live(conn)
    return [
        _client_row(row, status, live.get(row.id, totals.NOT_CONNECTED))
        for row in ALL_CLIENTS(conn, heartbeat=_heartbeat(status))
    ]


def client(
    conn: Connection, status: CollectorStatus, common_name: str
) -> tuple[ClientRow, list[OpenSession]] | None:
    """One client and its open sessions (oldest first), by key lookups only."""
    row = ONE_CLIENT(conn, name=common_name).first()
    if row is None:
        return None
    sessions = open_sessions(conn, row.id)
    last = (
        LAST_SAMPLE(conn, client_id=row.id, ts=_heartbeat(status)).first() if row.active else None
    )
    live = totals.Live(
        sum(x.received for x in sessions),
        sum(x.sent for x in sessions),
        len(sessions),
        sessions[0].connected_since if sessions else None,
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
    live: totals.Live,
    last_sample: tuple[int, int] | None = None,
) -> ClientRow:
    """A clients row plus its open sessions."""
    active = bool(row.active)
    last_received, last_sent = (
        last_sample if last_sample is not None else (row.last_received, row.last_sent)
    )
    return ClientRow(
        id=row.id,
        common_name=row.common_name,
        active=active,
        first_seen=row.first_seen,
        last_seen=totals.last_seen(row.last_seen, active, status.heartbeat),
        total_received=row.closed_received + live.received,
        total_sent=row.closed_sent + live.sent,
        open_sessions=live.sessions,
        connected_since=live.connected_since,
        last_received=int(last_received),
        last_sent=int(last_sent),
    )


CLIENT_STATUS = Prepared(select(c.c.common_name, c.c.active).order_by(c.c.common_name))


def client_status(conn: Connection) -> list[tuple[str, bool]]:
    """(common name, active) of every client, by name: all that /clients needs."""
    return [(name, bool(active)) for name, active in CLIENT_STATUS(conn)]


OPEN_SESSIONS = Prepared(
    select(
        *totals.COUNTED,
        s.c.real_address,
        s.c.virtual_address,
        s.c.virtual_ipv6,
        s.c.connected_since,
    )
    .where(s.c.client_id == bindparam("client_id"), s.c.disconnected_at.is_(None))
    .order_by(s.c.connected_since, s.c.id)
)


def open_sessions(conn: Connection, client_id: int) -> list[OpenSession]:
    """A client's open sessions, oldest first."""
    rows = OPEN_SESSIONS(conn, client_id=client_id).all()
    return [
        OpenSession(
            source=row.source,
            real_address=row.real_address,
            virtual_address=row.virtual_address,
            virtual_ipv6=row.virtual_ipv6,
            connected_since=row.connected_since,
            received=rx,
            sent=tx,
        )
        for row, (rx, tx) in zip(rows, totals.counted(conn, rows, every_source=False), strict=True)
    ]


LAST_INTERVAL = Prepared(select(g.c.interval).where(g.c.ts == bindparam("ts")))


def last_interval(conn: Connection, status: CollectorStatus) -> float:
    """The monotonic length of the collector's last poll interval (0 when unknown)."""
    if status.heartbeat is None:
        return 0.0
    return float(LAST_INTERVAL(conn, ts=status.heartbeat).scalar() or 0.0)


SOURCE_COUNTS = Prepared(
    select(s.c.source, func.count(func.distinct(s.c.client_id)), func.count())
    .where(s.c.disconnected_at.is_(None))
    .group_by(s.c.source)
)


def source_counts(conn: Connection) -> dict[str, tuple[int, int]]:
    """Per source: (clients, sessions) open now."""
    return {source: (clients, count) for source, clients, count in SOURCE_COUNTS(conn)}
