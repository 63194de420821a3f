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

from ovpnmon_collector.parser import Snapshot, session_key

# A session within one source, as the accounting looks it up: its Client ID when OpenVPN gives
# one (unique among the clients it serves; a match must also have the same connected since, as a
# restarted OpenVPN hands the same ids out again), else ("addr:<Real Address>", connected since).
# All text (parser.Row: the fast parser never converts them); a str never equals a tuple, so the
# two kinds cannot collide. The sessions table stores the key as "id:<n>" or "addr:<address>"
# and connected since as an integer. One string rather than a tuple of two took a quarter off
# the accounting of a poll of 10,000 sessions.
SessionId = str | tuple[str, str]


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
    since_text: str  # connected_since as parser.Row gives it, to compare without converting
    row_id: int | None = None  # the sessions table's id once stored

    @property
    def ident(self) -> SessionId:
        key = self.key
        return key[3:] if key.startswith("id:") else (key, self.since_text)


@dataclass(slots=True)
class SourceDelta:
    """What one snapshot of one source changed."""

    state: dict[SessionId, SessionState]  # every session open now, its counters as of now
    opened: list[SessionState] = field(default_factory=list)
    moved: list[SessionState] = field(default_factory=list)  # still open, addresses changed
    closed: list[SessionState] = field(default_factory=list)
    # common name -> [bytes received, bytes sent] this poll
    deltas: dict[str, list[int]] = field(default_factory=dict)
    # the snapshot's counter columns when they line up with ``state`` (see counters())
    columns: tuple[list[int], list[int]] | None = None

    def counters(self) -> tuple[list[int], list[int]]:
        """Bytes received and sent of every open session, in ``state``'s order: the snapshot's
        own columns when every row of it is a session of ``state`` (nearly always), which spares
        visiting 10,000 session objects twice; else read from the sessions."""
        if self.columns is not None:
            return self.columns
        sessions = self.state.values()
        return [st.bytes_received for st in sessions], [st.bytes_sent for st in sessions]


def account_source(
    previous: dict[SessionId, SessionState],
    snapshot: Snapshot,
    *,
    source: str,
    first_watched: int,
    now: int,
) -> SourceDelta:
    """Account one source's snapshot against the sessions it had open at the last poll.

    The loop runs once per session per poll (tens of thousands), so it keeps to locals.
    """
    state: dict[SessionId, SessionState] = {}
    opened: list[SessionState] = []
    moved: list[SessionState] = []
    closed: list[SessionState] = []
    deltas: dict[str, list[int]] = {}
    unseen = dict(previous)  # what this snapshot does not show again has closed
    for name, real, v4, v6, rx_now, tx_now, since, cid in snapshot.rows():
        ident: SessionId = cid if cid is not None else (f"addr:{real}", since)
        if ident in state:
            continue  # a duplicated line in one snapshot must not count twice
        known = unseen.pop(ident, None)
        if known is not None and known.since_text != since:
            closed.append(known)  # its Client ID handed out again after a restart
            known = None
        if known is None:
            # counted in full if it connected since the first watch, else its counters now are
            # a baseline that is never counted
            connected = int(since)
            base = connected < first_watched
            # positional, in SessionState's field order: a third of the cost of keywords, which
            # shows when OpenVPN restarts and 10,000 sessions open in one poll
            known = SessionState(
                source,
                session_key(cid, real),
                connected,
                name,
                rx_now,
                tx_now,
                rx_now if base else 0,
                tx_now if base else 0,
                real,
                v4,
                v6,
                now,
                now,
                since,
            )
            opened.append(known)
            rx = rx_now - known.baseline_received
            tx = tx_now - known.baseline_sent
        else:
            rx = rx_now - known.bytes_received
            tx = tx_now - known.bytes_sent
            if rx < 0 or tx < 0:
                # Counters went backwards under one identity: OpenVPN restarted them. What is
                # there now was all transferred since.
                rx, tx = rx_now, tx_now
            known.bytes_received = rx_now
            known.bytes_sent = tx_now
            known.last_seen = now
            if (
                real != known.real_address
                or v4 != known.virtual_address
                or v6 != known.virtual_ipv6
            ):
                moved.append(known)
            # Kept even when equal: this poll's strings sit together in memory in the status
            # file's order, the ones they replace wherever their session opened. Comparing with
            # the old ones cost about a millisecond a poll of 10,000 sessions in cache misses.
            known.real_address = real
            known.virtual_address = v4
            known.virtual_ipv6 = v6
            known.since_text = since
        state[ident] = known
        totals = deltas.get(name)
        if totals is None:
            deltas[name] = [rx, tx]
        else:
            totals[0] += rx
            totals[1] += tx
    closed.extend(unseen.values())
    # state holds the rows in snapshot order, unless a duplicated line was skipped
    columns = snapshot.counter_columns() if len(state) == len(snapshot) else None
    return SourceDelta(state, opened, moved, closed, deltas, columns)


def merge_sources(deltas: Iterable[SourceDelta]) -> dict[str, list[int]]:
    """Per client, [bytes received, bytes sent] summed over every source (a CN on two instances,
    or with duplicate-cn within one). With one source that is its own ``deltas``, as is."""
    deltas = list(deltas)
    if len(deltas) == 1:
        return deltas[0].deltas
    clients: dict[str, list[int]] = {}
    for delta in deltas:
        for name, (rx, tx) in delta.deltas.items():
            totals = clients.setdefault(name, [0, 0])
            totals[0] += rx
            totals[1] += tx
    return clients
