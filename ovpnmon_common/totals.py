"""Lifetime totals, the one rule: a client's bytes are its closed sessions' counted bytes
(``clients.closed_*``) plus, for each open session, its counters now minus its baseline.

An open session's counters now are its entry in its source's packed counters
(``ovpnmon_common.counters``), rewritten by every poll; a session without an entry there keeps
the counters of its ``sessions`` row. The API's figures and the collector's tests both read
them here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from sqlalchemy import Connection, bindparam, case, func, select

from ovpnmon_common import schema
from ovpnmon_common.counters import Counters
from ovpnmon_common.storage.statements import Prepared, plain_rows, total

c, s, sc, h = schema.clients, schema.sessions, schema.session_counters, schema.hosts

# Rows that ``counted`` reads start with these columns, in this order. With every source's
# counters unpacked (``every_source``) it reads only the first five (``_COUNTING``): a sum
# over every open session leaves out the source's name, a string a row (9.8 -> 7.7 ms for
# 8,287 sessions).
COUNTED = (
    s.c.id,
    s.c.bytes_received,
    s.c.bytes_sent,
    s.c.baseline_received,
    s.c.baseline_sent,
    s.c.host_id,
    s.c.source,
)
_COUNTING = COUNTED[:5]
_OPEN_ALL = Prepared(
    select(*_COUNTING, s.c.client_id, s.c.connected_since).where(s.c.disconnected_at.is_(None))
)
_ALL_COUNTERS = Prepared(select(sc.c.host_id, sc.c.source, sc.c.counters))


def counted(conn: Connection, rows: list[Any], every_source: bool) -> list[tuple[int, int]]:
    """Counted bytes (counters now minus baseline) of each open session row, in order.
    ``every_source``: unpack every source's counters (many sessions) rather than look each
    row up in its own source's (a few; the rows then need all of ``COUNTED``). Either way one
    statement reads every source's packed row (a round trip on PostgreSQL; a few kB a
    source). Session ids are unique across hosts and sources, so a session's entry is found
    by its id alone."""
    if not rows:
        return []
    if every_source:
        current: dict[int, tuple[int, int]] = {}
        for _, _, data in _ALL_COUNTERS(conn):
            current.update(Counters(data).items())
        return _minus_baselines(rows, current)
    return _minus_baselines(rows, _looked_up(rows, _ALL_COUNTERS(conn)))


# A column for a statement of open sessions: the packed counters of the session's source, on
# the first row of each source (NULL on its others: they are kilobytes, sent once). Such a
# statement reads sessions and their counters in one round trip (``counted_carried``). It
# must have no LIMIT: the first row of a source could be cut off.
CARRIED_COUNTERS = case(
    (
        func.row_number().over(partition_by=(s.c.host_id, s.c.source), order_by=s.c.id) == 1,
        select(sc.c.counters)
        .where(sc.c.host_id == s.c.host_id, sc.c.source == s.c.source)
        .correlate(s)
        .scalar_subquery(),
    )
).label("counters")


def counted_carried(rows: list[Any]) -> list[tuple[int, int]]:
    """``counted`` for rows that carry their sources' packed counters (``CARRIED_COUNTERS``,
    the last column)."""
    packed = [(row[5], row[6], row[-1]) for row in rows if row[-1] is not None]
    return _minus_baselines(rows, _looked_up(rows, packed))


def _looked_up(rows: list[Any], packed: Iterable[Any]) -> dict[int, tuple[int, int]]:
    """The entries of ``rows``' sessions in ``packed`` ((host, source, packed counters))."""
    by_source: dict[tuple[int, str], list[int]] = {}
    for row in rows:
        by_source.setdefault((row[5], row[6]), []).append(row[0])
    current: dict[int, tuple[int, int]] = {}
    for host, source, data in packed:
        sessions = by_source.get((host, source))
        if sessions:
            current.update(Counters(data).lookup(sessions).items())
    return current


def _minus_baselines(rows: list[Any], current: dict[int, tuple[int, int]]) -> list[tuple[int, int]]:
    """Each row's counters now (its entry in ``current``, else its row's) minus its
    baseline."""
    result: list[tuple[int, int]] = []
    append, get = result.append, current.get
    for row in rows:  # by index: unpacking a row of any length builds a list a row
        now = get(row[0])
        if now is None:
            append((row[1] - row[3], row[2] - row[4]))
        else:
            append((now[0] - row[3], now[1] - row[4]))
    return result


def last_seen(stored: int, active: bool, heartbeat: int | None) -> int:
    """When a client was last seen: a connected one at the collector's last poll
    (``heartbeat``), which saw it; otherwise the time stored when it was last seen."""
    return heartbeat if active and heartbeat else stored


class Live(NamedTuple):
    """A client's open sessions, summed (a tuple: ``/stats`` builds 10,000 of them)."""

    received: int
    sent: int
    sessions: int
    connected_since: int | None  # the earliest


NOT_CONNECTED = Live(0, 0, 0, None)


def live(conn: Connection) -> dict[int, Live]:
    """Client id -> its open sessions' counted bytes, count and earliest Connected Since."""
    rows = plain_rows(_OPEN_ALL(conn))
    sums: dict[int, Live] = {}
    for row, (rx, tx) in zip(rows, counted(conn, rows, every_source=True), strict=True):
        client, since = row[-2], row[-1]
        entry = sums.get(client)
        # tuple.__new__: a NamedTuple's own __new__ is Python code, a third of this loop
        if entry is None:
            sums[client] = _new(Live, (rx, tx, 1, since))
        else:
            sums[client] = _new(
                Live, (entry[0] + rx, entry[1] + tx, entry[2] + 1, min(entry[3], since))
            )
    return sums


_new = tuple.__new__


_LIFETIME = Prepared(
    select(
        c.c.id,
        c.c.common_name,
        c.c.host_id,
        c.c.active,
        c.c.last_seen,
        c.c.closed_received,
        c.c.closed_sent,
    ).order_by(c.c.common_name)
)
_HEARTBEATS = Prepared(select(h.c.id, h.c.heartbeat).where(h.c.heartbeat.is_not(None)))


class Lifetime(NamedTuple):
    """One client's lifetime bytes (a common name: on every host) and what is open now."""

    common_name: str
    active: bool
    last_seen: int  # a connected client's is its host's last poll
    received: int
    sent: int
    sessions: int  # open now


def lifetimes(conn: Connection) -> list[Lifetime]:
    """Every client's lifetime bytes and open sessions, by common name."""
    open_ = live(conn)
    heartbeats = dict(_HEARTBEATS(conn).all())
    found: list[Lifetime] = []
    for cid, name, host, active, seen, closed_rx, closed_tx in _LIFETIME(conn):
        now = open_.get(cid, NOT_CONNECTED)
        part = Lifetime(
            name,
            bool(active),
            last_seen(seen, bool(active), heartbeats.get(host)),
            closed_rx + now.received,
            closed_tx + now.sent,
            now.sessions,
        )
        if found and found[-1].common_name == name:  # the same client on another host
            other = found[-1]
            part = Lifetime(
                name,
                part.active or other.active,
                max(part.last_seen, other.last_seen),
                part.received + other.received,
                part.sent + other.sent,
                part.sessions + other.sessions,
            )
            found[-1] = part
        else:
            found.append(part)
    return found


def lifetime_totals(conn: Connection) -> dict[str, tuple[int, int, bool]]:
    """Every client's lifetime (bytes received, bytes sent, active), by common name."""
    return {x.common_name: (x.received, x.sent, x.active) for x in lifetimes(conn)}


def _system(where: Any = None) -> Prepared:
    query = select(
        func.count(func.distinct(c.c.common_name)),
        func.count(func.distinct(case((c.c.active, c.c.common_name), else_=None))),
        func.coalesce(total(c.c.closed_received), 0),
        func.coalesce(total(c.c.closed_sent), 0),
    )
    return Prepared(query.where(where) if where is not None else query)


_SYSTEM = _system()
_HOST_SYSTEM = _system(c.c.host_id == bindparam("host_id"))
_HOST_OPEN = Prepared(
    select(*COUNTED).where(s.c.disconnected_at.is_(None), s.c.host_id == bindparam("host_id"))
)


@dataclass(frozen=True)
class SystemTotals:
    """The whole server's (or fleet's) counts and lifetime bytes."""

    clients: int
    active: int
    received: int
    sent: int


def system_totals(conn: Connection, host_id: int | None = None) -> SystemTotals:
    """Clients ever seen, clients active, and every byte counted (on ``host_id``, or on every
    host: a common name seen on two hosts is one client)."""
    if host_id is None:
        count, active, closed_rx, closed_tx = _SYSTEM(conn).one()
        open_ = counted(conn, plain_rows(_OPEN_ALL(conn)), every_source=True)
    else:
        count, active, closed_rx, closed_tx = _HOST_SYSTEM(conn, host_id=host_id).one()
        open_ = counted(conn, plain_rows(_HOST_OPEN(conn, host_id=host_id)), every_source=False)
    return SystemTotals(
        clients=count,
        active=active,
        received=int(closed_rx) + sum(rx for rx, _ in open_),
        sent=int(closed_tx) + sum(tx for _, tx in open_),
    )
