"""Per-session counters -> exact per-client byte deltas: pure functions, no I/O, no clock.

The rules (docs/accounting.md, from product.md):
- a session is (source, Client ID or Real Address, Connected Since); its delta is counters now
  minus counters at the last poll that saw it;
- a session seen for the first time is counted in full if it connected at or after the moment its
  source was first watched, otherwise its counters are a baseline that is never counted;
- a session missing from a snapshot has disconnected; its last counted bytes stay counted;
- per client, the delta of a poll is the sum over that client's sessions on every source.
And for what OpenVPN should never show but a host may:
- a counter lower than at the last poll restarted from zero: in that direction, all of it is
  new (the other direction is counted as usual); never a negative delta;
- a session keeps the common name it was first seen with (OpenVPN locks it for the session);
- a row whose numbers cannot be stored (``Snapshot.held``) leaves its session as it was;
- status-version 1 keys sessions by Real Address: a session that disappears while one of the
  same common name and Connected Since appears from another address has floated (a UDP client
  re-NATed) and carries on, counted from where it was.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from ovpnmon_collector.snapshot import MAX_STORED, HeldRow, Snapshot

# A session within one source, as the accounting looks it up: its Client ID when OpenVPN gives
# one (unique among the clients it serves; a match must also have the same connected since, as a
# restarted OpenVPN hands the same ids out again), else ("addr:<Real Address>", connected since).
# All text (snapshot.Row: the fast parser never converts them); a str never equals a tuple, so the
# two kinds cannot collide. The sessions table stores the key as "id:<n>" or "addr:<address>"
# and connected since as an integer. One string rather than a tuple of two took a quarter off
# the accounting of a poll of 10,000 sessions.
SessionId = str | tuple[str, str]


def session_key(client_id: int | str | None, real_address: str) -> str:
    """A session's key as the ``sessions`` table stores it: "id:<Client ID>" when OpenVPN gives
    one, else "addr:<Real Address>" (status-version 1). ``client_id`` as an int or its text."""
    if client_id is not None:
        return f"id:{client_id}"
    return f"addr:{real_address}"


@dataclass(slots=True)
class SessionState:
    """What the collector remembers of one open session between polls (and across restarts)."""

    source: str
    key: str
    connected_since: int
    common_name: str
    bytes_received: int
    bytes_sent: int
    # ``bytes - baseline`` is what the session has counted. The baseline is its counters at first
    # sight for a session already connected when its source was first watched, else 0; it goes
    # down when a counter restarts under one identity (so it may be negative).
    baseline_received: int
    baseline_sent: int
    real_address: str
    virtual_address: str
    virtual_ipv6: str
    first_seen: int
    last_seen: int
    since_text: str  # connected_since as snapshot.Row gives it, to compare without converting
    row_id: int | None = None  # the sessions table's id once stored

    @property
    def ident(self) -> SessionId:
        """(key, Connected Since as text): how a snapshot's row finds this session."""
        key = self.key
        return key[3:] if key.startswith("id:") else (key, self.since_text)


@dataclass(frozen=True, slots=True)
class Oddity:
    """Something OpenVPN should never show, and what the accounting did: logged once."""

    kind: str  # "renamed", "held", "counter down", "floated"
    session: SessionId
    message: str


@dataclass(slots=True)
class SourceDelta:
    """What one snapshot of one source changed."""

    state: dict[SessionId, SessionState]  # every session open now, its counters as of now
    opened: list[SessionState] = field(default_factory=list)
    # still open, and its addresses (or, for a floated status-version 1 session, its key) changed
    moved: list[SessionState] = field(default_factory=list)
    closed: list[SessionState] = field(default_factory=list)
    # still open, and its baseline moved: a counter restarted under one identity
    rebased: list[SessionState] = field(default_factory=list)
    oddities: list[Oddity] = field(default_factory=list)
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
    rebased: list[SessionState] = []
    oddities: list[Oddity] = []
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
                _restarted(known, rx_now, tx_now, rebased, oddities, ident)
                if rx < 0:
                    rx = rx_now
                if tx < 0:
                    tx = tx_now
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
            if name != known.common_name:
                oddities.append(
                    Oddity(
                        "renamed",
                        ident,
                        f"session {known.key} (connected {known.connected_since}) now shows "
                        f"common name {name!r}: still counted to {known.common_name!r}, the name "
                        "it connected with",
                    )
                )
                name = known.common_name
        state[ident] = known
        totals = deltas.get(name)
        if totals is None:
            deltas[name] = [rx, tx]
        else:  # another session of the same name (duplicate-cn): rare
            totals[0] += rx
            totals[1] += tx
            if totals[0] > MAX_STORED or totals[1] > MAX_STORED:
                _cap(name, totals, oddities)
    if snapshot.held:
        _hold(snapshot.held, unseen, state, deltas, oddities)
    if opened and unseen and snapshot.version == 1:
        _floated(opened, unseen, state, deltas, moved, rebased, oddities, now)
    closed.extend(unseen.values())
    # state holds the rows in snapshot order, unless a duplicated line was skipped
    columns = snapshot.counter_columns() if len(state) == len(snapshot) else None
    return SourceDelta(state, opened, moved, closed, rebased, oddities, deltas, columns)


def _restarted(
    known: SessionState,
    rx_now: int,
    tx_now: int,
    rebased: list[SessionState],
    oddities: list[Oddity],
    ident: SessionId,
) -> None:
    """A counter below the last poll's under one identity restarted from zero: in that
    direction all there is now was moved since. The baseline moves down by what was there, so
    that ``bytes - baseline`` stays what the session has counted."""
    down = []
    if rx_now < known.bytes_received:
        known.baseline_received -= known.bytes_received
        down.append(f"received {known.bytes_received} -> {rx_now}")
    if tx_now < known.bytes_sent:
        known.baseline_sent -= known.bytes_sent
        down.append(f"sent {known.bytes_sent} -> {tx_now}")
    rebased.append(known)
    oddities.append(
        Oddity(
            "counter down",
            ident,
            f"session {known.key} of {known.common_name!r}: counter went down without a "
            f"reconnect ({', '.join(down)}): counted as restarted from zero",
        )
    )


def _hold(
    held: tuple[HeldRow, ...],
    unseen: dict[SessionId, SessionState],
    state: dict[SessionId, SessionState],
    deltas: dict[str, list[int]],
    oddities: list[Oddity],
) -> None:
    """Rows with numbers that cannot be stored: a session already open stays exactly as it was
    (not closed, nothing counted) until its numbers can be stored again; a new one waits."""
    for row in held:
        ident: SessionId = (
            row.client_id
            if row.client_id is not None
            else (f"addr:{row.real_address}", row.connected_since)
        )
        known = unseen.get(ident)
        if known is not None and known.since_text == row.connected_since:
            del unseen[ident]
            state[ident] = known
            deltas.setdefault(known.common_name, [0, 0])
        oddities.append(
            Oddity("held", ident, f"session of {row.common_name!r} not counted: {row.reason}")
        )


def _floated(
    opened: list[SessionState],
    unseen: dict[SessionId, SessionState],
    state: dict[SessionId, SessionState],
    deltas: dict[str, list[int]],
    moved: list[SessionState],
    rebased: list[SessionState],
    oddities: list[Oddity],
    now: int,
) -> None:
    """Status-version 1 keys a session by its Real Address: one that floated (a UDP client
    re-NATed) looks like a session closing and one of the same common name and Connected Since
    opening. Pair them and carry the old session on, counted from where it was. Several sessions
    of one name and second are paired in the order of their counters."""
    gone: dict[tuple[str, str], list[SessionState]] = {}
    for st in unseen.values():
        gone.setdefault((st.common_name, st.since_text), []).append(st)
    came: dict[tuple[str, str], list[SessionState]] = {}
    for st in opened:
        if (st.common_name, st.since_text) in gone:
            came.setdefault((st.common_name, st.since_text), []).append(st)
    for pair, new_sessions in came.items():
        old_sessions = gone[pair]
        pairs = zip(sorted(new_sessions, key=_size), sorted(old_sessions, key=_size), strict=False)
        for new, old in pairs:
            new_ident: SessionId = (new.key, new.since_text)
            del unseen[(old.key, old.since_text)]
            previous_key = old.key
            _carry_on(old, new, new_ident, opened, state, deltas, rebased, oddities, now)
            old.key = new.key
            moved.append(old)
            oddities.append(
                Oddity(
                    "floated",
                    new_ident,
                    f"session of {old.common_name!r} floated from {previous_key[5:]} to "
                    f"{old.key[5:]}: the same session (status-version 1 keys by address)",
                )
            )


def reopen(delta: SourceDelta, back: list[SessionState], now: int) -> None:
    """Sessions ``delta`` opened that are closed sessions come back (the same source, key and
    Connected Since: a status that left them out for a while): each carries on as the closed
    session, counted from the counters it had when it closed, under the name it connected with.
    ``back`` holds those closed sessions as they were stored."""
    stored = {(st.key, st.connected_since): st for st in back}
    for new in list(delta.opened):
        old = stored.get((new.key, new.connected_since))
        if old is None:
            continue
        ident = new.ident
        if new.common_name != old.common_name:
            delta.oddities.append(
                Oddity(
                    "renamed",
                    ident,
                    f"session {old.key} (connected {old.connected_since}) now shows common name "
                    f"{new.common_name!r}: still counted to {old.common_name!r}, the name it "
                    "connected with",
                )
            )
        _carry_on(
            *(old, new, ident, delta.opened, delta.state, delta.deltas),
            *(delta.rebased, delta.oddities, now),
        )
    for name in [name for name, totals in delta.deltas.items() if totals == [0, 0]]:
        if not any(st.common_name == name for st in delta.state.values()):
            del delta.deltas[name]  # its only session was the one given back to another name


def _carry_on(
    old: SessionState,
    new: SessionState,
    ident: SessionId,
    opened: list[SessionState],
    state: dict[SessionId, SessionState],
    deltas: dict[str, list[int]],
    rebased: list[SessionState],
    oddities: list[Oddity],
    now: int,
) -> None:
    """``new``, just opened, is ``old`` carrying on: count it from ``old``'s counters instead of
    as a new session, under ``old``'s name, and let ``old`` take its place in ``state`` (the
    same key: the dict keeps its order, see ``SourceDelta.counters``)."""
    opened.remove(new)
    undone = deltas[new.common_name]
    undone[0] -= new.bytes_received - new.baseline_received
    undone[1] -= new.bytes_sent - new.baseline_sent
    rx = new.bytes_received - old.bytes_received
    tx = new.bytes_sent - old.bytes_sent
    if rx < 0 or tx < 0:
        _restarted(old, new.bytes_received, new.bytes_sent, rebased, oddities, ident)
        rx = new.bytes_received if rx < 0 else rx
        tx = new.bytes_sent if tx < 0 else tx
    counted = deltas.setdefault(old.common_name, [0, 0])
    counted[0] += rx
    counted[1] += tx
    old.bytes_received, old.bytes_sent = new.bytes_received, new.bytes_sent
    old.real_address, old.virtual_address = new.real_address, new.virtual_address
    old.virtual_ipv6, old.last_seen = new.virtual_ipv6, now
    state[ident] = old


def _cap(name: str, totals: list[int], oddities: list[Oddity]) -> None:
    """A client's bytes of one poll beyond what the database stores (only several sessions of
    one name with counters near 2^63 get there): stored as the most it can hold, and said."""
    oddities.append(
        Oddity(
            "too large",
            name,
            f"client {name!r} moved {totals[0]} / {totals[1]} bytes in one poll, more than "
            f"ovpnmon can store: recorded as {MAX_STORED}",
        )
    )
    totals[0] = min(totals[0], MAX_STORED)
    totals[1] = min(totals[1], MAX_STORED)


def _size(session: SessionState) -> int:
    return session.bytes_received + session.bytes_sent


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
            if totals[0] > MAX_STORED or totals[1] > MAX_STORED:
                _cap(name, totals, delta.oddities)
    return clients
