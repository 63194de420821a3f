"""Per-session counters -> exact per-client byte deltas: pure functions, no I/O, no clock.

The rules (docs/accounting.md, from product.md):
- a session is (source, Client ID or Real Address, Connected Since); its delta is counters now
  minus counters at the last poll that saw it;
- a session seen for the first time is counted in full if it connected at or after the moment its
  source was first watched, otherwise its counters are a baseline that is never counted;
- a session missing from a snapshot has disconnected; its last counted bytes stay counted;
- per client, the delta of a poll is the sum over that client's sessions on every source.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ovpnmon_collector.parser import SessionRow, Snapshot

SessionId = tuple[str, int]  # (session key, connected since) within one source


@dataclass(slots=True)
class SessionState:
    """What the collector remembers of one open session between polls (and across restarts)."""

    source: str
    key: str
    connected_since: int
    common_name: str
    bytes_received: int
    bytes_sent: int
    baseline_received: int
    baseline_sent: int
    real_address: str
    virtual_address: str
    virtual_ipv6: str
    first_seen: int
    last_seen: int
    row_id: int | None = None  # the sessions table's id once stored

    @property
    def ident(self) -> SessionId:
        return (self.key, self.connected_since)


@dataclass(slots=True)
class SourceDelta:
    """What one snapshot of one source changed."""

    state: dict[SessionId, SessionState]
    opened: list[SessionState] = field(default_factory=list)
    seen: list[SessionState] = field(default_factory=list)  # still open, counters moved on
    moved: list[SessionState] = field(default_factory=list)  # still open, addresses changed
    closed: list[SessionState] = field(default_factory=list)
    # common name -> [bytes received, bytes sent] this poll
    deltas: dict[str, list[int]] = field(default_factory=dict)


def account_source(
    previous: dict[SessionId, SessionState],
    snapshot: Snapshot,
    *,
    source: str,
    first_watched: int,
    now: int,
) -> SourceDelta:
    """Account one source's snapshot against the sessions it had open at the last poll."""
    result = SourceDelta(state={})
    for row in snapshot.sessions:
        ident = (row.key, row.connected_since)
        if ident in result.state:
            continue  # a duplicated line in one snapshot must not count twice
        known = previous.get(ident)
        if known is None:
            state = _new_session(row, source, first_watched, now)
            result.opened.append(state)
            rx = row.bytes_received - state.baseline_received
            tx = row.bytes_sent - state.baseline_sent
        else:
            state = known
            rx = row.bytes_received - known.bytes_received
            tx = row.bytes_sent - known.bytes_sent
            if rx < 0 or tx < 0:
                # Counters went backwards under one identity: OpenVPN restarted them. What is
                # there now was all transferred since.
                rx, tx = row.bytes_received, row.bytes_sent
            state.last_seen = now
            if (row.bytes_received, row.bytes_sent) != (state.bytes_received, state.bytes_sent):
                state.bytes_received = row.bytes_received
                state.bytes_sent = row.bytes_sent
                result.seen.append(state)
            if (row.real_address, row.virtual_address, row.virtual_ipv6) != (
                state.real_address,
                state.virtual_address,
                state.virtual_ipv6,
            ):
                state.real_address = row.real_address
                state.virtual_address = row.virtual_address
                state.virtual_ipv6 = row.virtual_ipv6
                result.moved.append(state)
        result.state[ident] = state
        totals = result.deltas.setdefault(row.common_name, [0, 0])
        totals[0] += rx
        totals[1] += tx
    result.closed = [s for ident, s in previous.items() if ident not in result.state]
    return result


def _new_session(row: SessionRow, source: str, first_watched: int, now: int) -> SessionState:
    predates_watch = row.connected_since < first_watched
    return SessionState(
        source=source,
        key=row.key,
        connected_since=row.connected_since,
        common_name=row.common_name,
        bytes_received=row.bytes_received,
        bytes_sent=row.bytes_sent,
        baseline_received=row.bytes_received if predates_watch else 0,
        baseline_sent=row.bytes_sent if predates_watch else 0,
        real_address=row.real_address,
        virtual_address=row.virtual_address,
        virtual_ipv6=row.virtual_ipv6,
        first_seen=now,
        last_seen=now,
    )


@dataclass(slots=True)
class ClientPoll:
    """One client's bytes for one poll, summed over its sessions on every source."""

    bytes_received: int = 0
    bytes_sent: int = 0


def merge_sources(deltas: Iterable[SourceDelta]) -> dict[str, ClientPoll]:
    """Sum per-source deltas per client (a CN on two instances, or with duplicate-cn)."""
    clients: dict[str, ClientPoll] = {}
    for delta in deltas:
        for name, (rx, tx) in delta.deltas.items():
            client = clients.get(name)
            if client is None:
                client = clients[name] = ClientPoll()
            client.bytes_received += rx
            client.bytes_sent += tx
    return clients
