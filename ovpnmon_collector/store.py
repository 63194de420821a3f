"""The one layer of the collector that touches the database: load state, write one poll.

Every poll is one transaction, so a crash or a failed write leaves the database as it was after
the previous poll; the collector then reloads its state from here and counts the missed bytes in
the next poll that commits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, func, select

from ovpnmon_collector import rollup
from ovpnmon_collector import store_sql as sql
from ovpnmon_collector.accounting import SessionId, SessionState, SourceDelta
from ovpnmon_common import counters, meta, schema
from ovpnmon_common.config import default_host
from ovpnmon_common.storage import engines, statements

_T = TypeVar("_T")


@dataclass(slots=True)
class PollWrite:
    """Everything one poll stores, in one transaction."""

    ts: int
    interval: float  # monotonic seconds since the previous poll (0 when unknown)
    configured_interval: int
    clients: dict[str, list[int]]  # common name -> [bytes received, bytes sent] this poll
    opened: list[SessionState] = field(default_factory=list)
    # source -> what reading it changed (its open sessions): the sources read this poll only
    open_now: dict[str, SourceDelta] = field(default_factory=dict)
    moved: list[SessionState] = field(default_factory=list)  # addresses changed
    closed: list[SessionState] = field(default_factory=list)
    # closed sessions that came back: (session, its counted bytes when it closed)
    reopened: list[tuple[SessionState, int, int]] = field(default_factory=list)
    rebased: list[SessionState] = field(default_factory=list)  # baseline moved
    # sessions of sources no longer configured, closed at the last poll that saw them
    retired: list[SessionState] = field(default_factory=list)
    retired_sources: list[str] = field(default_factory=list)
    active: set[str] = field(default_factory=set)  # CNs with an open session on any source
    health: dict[str, dict[str, Any]] = field(default_factory=dict)  # only changed entries
    last_poll_seconds: float | None = None  # how long the previous stored poll took


class Store:
    """One collector's part of the database (its host's): loads its state, writes one poll per
    transaction, and keeps the few facts that save a query every poll (client ids, who is
    active). ``host``: the collector's ``[collector] host``."""

    def __init__(self, engine: Engine, host: str | None = None) -> None:
        self.engine = engine
        self.host = host or default_host()
        self.host_id: int | None = None  # registered by the first load
        self._client_ids: dict[str, int] = {}
        self._active: set[str] | None = None
        # per source, the latest Connected Since of its closed sessions (see closed_sessions)
        self._closed_since: dict[str, int] = {}
        self._closed_since_stored = False
        # after a load, the stored active flags are compared with every client once; after
        # that, only clients with a session that opened or closed can change
        self._compare_all = True

    # --- reads at start-up ------------------------------------------------------------------

    def load_open_sessions(self, now: int) -> dict[str, dict[SessionId, SessionState]]:
        """This host's sessions not yet closed, by source: the accounting state to continue
        from. The host is registered (first seen ``now``) if it is new."""
        with self.engine.begin() as conn:
            self.host_id = host_id = meta.register_host(conn, self.host, now)
        s, c = schema.sessions, schema.clients
        # This host's clients, then each one's open sessions (a session is its client's host's):
        # filtering on sessions.host_id instead, SQLite read every session the host ever had
        # (3.5 million, 0.95 s, for a year of 10,000 clients).
        query = (
            select(s, c.c.common_name)
            .join(c, c.c.id == s.c.client_id)
            .where(s.c.disconnected_at.is_(None), c.c.host_id == host_id)
        )
        state: dict[str, dict[SessionId, SessionState]] = {}
        with self.engine.connect() as conn:
            for row in conn.execute(query).mappings():
                session = _session_state(row)
                state.setdefault(session.source, {})[session.ident] = session
            by_id = {st.row_id: st for sessions in state.values() for st in sessions.values()}
            sc = schema.session_counters
            polled = select(sc.c.source, sc.c.ts, sc.c.counters).where(sc.c.host_id == host_id)
            for source, ts, packed in conn.execute(polled):
                for row_id, (rx, tx) in counters.Counters(packed).items():
                    st = by_id.get(row_id)
                    if st is not None and st.source == source:
                        st.bytes_received, st.bytes_sent, st.last_seen = rx, tx, ts
            # Every id of this host's clients (about 100 bytes a client ever seen): clients are
            # never deleted and this collector is the one writer of its host's, so a name not in
            # here is new. Were a second collector to use the same host name (not supported),
            # this one's insert fails on the unique name and its poll is retried after a reload.
            self._client_ids = {}
            self._active = set()
            self._compare_all = True
            mine = select(c.c.common_name, c.c.id, c.c.active).where(c.c.host_id == host_id)
            for name, cid, active in conn.execute(mine):
                self._client_ids[name] = cid
                if active:
                    self._active.add(name)
            self._closed_since, self._closed_since_stored = _latest_closed(conn, host_id)
        return state

    @property
    def _host(self) -> int:
        if self.host_id is None:
            raise RuntimeError("Store.load_open_sessions() registers the host first")
        return self.host_id

    def first_watched(self, source: str, now: int) -> int:
        """When ``source`` was first watched; recorded (and committed) on the first call ever."""
        with self.engine.begin() as conn:
            value = meta.source_values(conn, self._host, "first_watched").get(source)
            if value is None:
                meta.put_sources(conn, self._host, "first_watched", {source: now})
                return now
            return int(value)

    def closed_sessions(
        self, source: str, candidates: list[SessionState]
    ) -> list[tuple[SessionState, int, int]]:
        """Closed sessions of ``source`` with the identity of one of ``candidates`` (sessions
        that look new): sessions that came back. Each as the state to carry on from, with the
        bytes it had counted when it closed.

        A session that comes back has the Connected Since of one that closed, so candidates
        that connected after every closed session of the source are not looked up (both times
        are OpenVPN's): after an OpenVPN restart, none of its 10,000 new sessions."""
        latest = self._closed_since.get(source)
        if latest is None:
            return []
        candidates = [st for st in candidates if st.connected_since <= latest]
        s, c = schema.sessions, schema.clients
        wanted = {(st.key, st.connected_since) for st in candidates}
        found = []
        with self.engine.connect() as conn:
            for chunk in _chunks(sorted({key for key, _ in wanted}), 500):
                query = (
                    select(s, c.c.common_name)
                    .join(c, c.c.id == s.c.client_id)
                    .where(
                        s.c.host_id == self._host,
                        s.c.source == source,
                        s.c.session_key.in_(chunk),
                        s.c.disconnected_at.is_not(None),
                    )
                )
                for row in conn.execute(query).mappings():
                    if (row["session_key"], row["connected_since"]) not in wanted:
                        continue
                    session = _session_state(row)
                    counted = (
                        row["bytes_received"] - row["baseline_received"],
                        row["bytes_sent"] - row["baseline_sent"],
                    )
                    found.append((session, *counted))
        return found

    def health(self) -> dict[str, dict[str, Any]]:
        """This host's sources' stored health records (what it said before a restart)."""
        with self.engine.connect() as conn:
            stored = meta.source_values(conn, self._host, "health")
        return {name: meta.decode_health(record) for name, record in sorted(stored.items())}

    # --- the poll ---------------------------------------------------------------------------

    def write_poll(self, poll: PollWrite) -> None:
        """Write one poll in one transaction: clients, sessions, samples, meta."""
        with self.engine.begin() as conn:
            engines.hold_tiers(conn, shared=True)
            # a client new to the database can only come with a session that opened now
            ids = self._ensure_clients(conn, poll.ts, [st.common_name for st in poll.opened])
            self._write_sessions(conn, poll, ids)
            self._write_samples(conn, poll, ids)
            self._write_clients(conn, poll, ids)
            host = self._host
            values: dict[str, Any] = {"heartbeat": poll.ts, "interval": poll.configured_interval}
            if poll.last_poll_seconds is not None:
                values["poll_seconds"] = round(poll.last_poll_seconds, 6)
            meta.put_host(conn, host, **values)
            if poll.health:
                health = {n: meta.encode_health(h) for n, h in poll.health.items()}
                meta.put_sources(conn, host, "health", health)
            latest = dict(self._closed_since)
            for st in (*poll.closed, *poll.retired):
                if st.connected_since > latest.get(st.source, -1):
                    latest[st.source] = st.connected_since
            changed = {
                source: since
                for source, since in latest.items()
                if not self._closed_since_stored or self._closed_since.get(source) != since
            }
            if changed:
                meta.put_sources(conn, host, "closed_since", changed)
            if poll.retired_sources:
                meta.delete_sources(conn, host, poll.retired_sources)
        self._active = poll.active  # the collector builds a new set every poll
        self._compare_all = False
        self._closed_since, self._closed_since_stored = latest, True

    def _ensure_clients(self, conn: Connection, now: int, names: Iterable[str]) -> dict[str, int]:
        new = [name for name in dict.fromkeys(names) if name not in self._client_ids]
        if new:
            # (A failed write rolls them back; the collector then reloads this map.)
            c = schema.clients
            ids = engines.next_ids(conn, "clients", len(new))
            host = self._host
            rows = [
                (cid, name, host, now, now, False, 0, 0) for cid, name in zip(ids, new, strict=True)
            ]
            statements.insert_tuples(conn, c, sql.CLIENT_COLUMNS, rows)
            self._client_ids.update(zip(new, ids, strict=True))
        return self._client_ids

    def _write_sessions(self, conn: Connection, poll: PollWrite, ids: Mapping[str, int]) -> None:
        s = schema.sessions
        if poll.opened:
            # ids taken before the insert: no reading them back after it
            new_ids = engines.next_ids(conn, "sessions", len(poll.opened))
            rows = []
            for row_id, st in zip(new_ids, poll.opened, strict=True):
                st.row_id = row_id
                rows.append(
                    (
                        *(row_id, self._host, st.source, st.key, st.connected_since),
                        ids[st.common_name],
                        *(st.real_address, st.virtual_address, st.virtual_ipv6),
                        *(st.first_seen, st.last_seen, st.bytes_received, st.bytes_sent),
                        *(st.baseline_received, st.baseline_sent),
                    )
                )
            statements.insert_tuples(conn, s, sql.SESSION_COLUMNS, rows)
        # Every poll stores the counters of every open session (that is what makes a restart exact):
        # one packed row per source read; addresses only when they changed (a UDP client floated).
        packed = []
        for source, delta in poll.open_now.items():
            row_ids = [st.row_id for st in delta.state.values()]  # all set by the insert above
            data = counters.pack(row_ids, *delta.counters())  # type: ignore[arg-type]
            packed.append(
                {"host_id": self._host, "source": source, "ts": poll.ts, "counters": data}
            )
        statements.upsert(conn, schema.session_counters, packed, ["host_id", "source"])
        if poll.retired_sources:
            counters_table = schema.session_counters
            conn.execute(
                counters_table.delete().where(
                    counters_table.c.host_id == self._host,
                    counters_table.c.source.in_(poll.retired_sources),
                )
            )
        reopened = [{"row_id": st.row_id, "ts": poll.ts} for st, _, _ in poll.reopened]
        statements.executemany(conn, sql.REOPEN_SESSION, reopened)
        moved = [
            {
                "row_id": st.row_id,
                "key": st.key,
                "real": st.real_address,
                "v4": st.virtual_address,
                "v6": st.virtual_ipv6,
            }
            for st in (*poll.moved, *(st for st, _, _ in poll.reopened))
        ]
        statements.executemany(conn, sql.UPDATE_ADDRESSES, moved)
        rebased = [
            {"row_id": st.row_id, "rx": st.baseline_received, "tx": st.baseline_sent}
            for st in poll.rebased
        ]
        statements.executemany(conn, sql.UPDATE_BASELINE, rebased)
        closed = [
            {
                "row_id": st.row_id,
                "ts": ts,
                "seen": st.last_seen,
                "rx": st.bytes_received,
                "tx": st.bytes_sent,
            }
            for ts, sessions in ((poll.ts, poll.closed), (None, poll.retired))
            for st in sessions
        ]
        for entry in closed:
            if entry["ts"] is None:  # a retired source's session: closed when last seen
                entry["ts"] = entry["seen"]
        statements.executemany(conn, sql.CLOSE_SESSION, closed)

    def _write_samples(self, conn: Connection, poll: PollWrite, ids: Mapping[str, int]) -> None:
        # column-wise, so that the per-client work runs in C
        received = list(map(itemgetter(0), poll.clients.values()))
        sent = list(map(itemgetter(1), poll.clients.values()))
        client_ids = map(ids.__getitem__, poll.clients)
        rows = list(zip(client_ids, repeat(poll.ts), received, sent, strict=False))
        # In key order (ts, client_id): SQLite then fills the B-tree's pages one after another
        # instead of inserting all over them (status files list clients in OpenVPN's order).
        rows.sort(key=itemgetter(0))
        total_rx, total_tx = sum(received), sum(sent)
        late = rollup.late_tiers(conn, poll.ts)
        if late:
            before = self._rows_at(conn, poll.ts)  # read before the rows below merge into them
        # two polls within one wall-clock second (or a clock stepped back) add up, never collide
        statements.upsert_tuples(
            conn, schema.usage_history, sql.SAMPLE_COLUMNS, rows, ["ts", "client_id"], merge=sql.ADD
        )
        if late:
            clients_before, server_before = before
            samples = [(cid, rx, tx, int(cid not in clients_before)) for cid, _, rx, tx in rows]
            server = (len(poll.active), total_rx, total_tx, int(not server_before))
            rollup.fold_in(conn, late, poll.ts, self._host, samples, server)
        statements.upsert(
            conn,
            schema.global_history,
            [
                {
                    "ts": poll.ts,
                    "host_id": self._host,
                    "bytes_received": total_rx,
                    "bytes_sent": total_tx,
                    "active_count": len(poll.active),
                    "interval": poll.interval,
                }
            ],
            ["ts", "host_id"],
            merge={**sql.ADD, "active_count": "max", "interval": "add"},
        )

    def _rows_at(self, conn: Connection, ts: int) -> tuple[set[int], bool]:
        """Which clients already have a raw sample at ``ts``, and whether this host's
        whole-server row exists (a second poll in one wall-clock second merges into them)."""
        u, g = schema.usage_history, schema.global_history
        clients = set(conn.execute(select(u.c.client_id).where(u.c.ts == ts)).scalars())
        server = (
            conn.execute(select(g.c.ts).where(g.c.ts == ts, g.c.host_id == self._host)).first()
            is not None
        )
        return clients, server

    def _write_clients(self, conn: Connection, poll: PollWrite, ids: Mapping[str, int]) -> None:
        """Only what changed: closed sessions' bytes, and clients that became (in)active."""
        closed: dict[int, list[int]] = {}
        last_seen: dict[str, int] = {}
        for st in (*poll.closed, *poll.retired):
            totals = closed.setdefault(ids[st.common_name], [0, 0])
            totals[0] += st.bytes_received - st.baseline_received
            totals[1] += st.bytes_sent - st.baseline_sent
            last_seen[st.common_name] = max(st.last_seen, last_seen.get(st.common_name, 0))
        for st, rx, tx in poll.reopened:  # counted as open again, no longer as closed
            totals = closed.setdefault(ids[st.common_name], [0, 0])
            totals[0] -= rx
            totals[1] -= tx
        statements.executemany(
            conn,
            sql.ADD_CLOSED,
            [{"cid": cid, "rx": rx, "tx": tx} for cid, (rx, tx) in closed.items()],
        )
        previously = self._active if self._active is not None else set()
        if self._compare_all:
            coming, going = poll.active - previously, previously - poll.active
        else:
            # a client's sessions all carried over from the last poll: it was active then and
            # is now. Only an opened or a closed session can change that (9,000 set lookups less).
            coming = {st.common_name for st in poll.opened} - previously
            coming.update({st.common_name for st, _, _ in poll.reopened} - previously)
            going = {st.common_name for st in (*poll.closed, *poll.retired)} - poll.active
        became = [ids[name] for name in coming if name in ids]
        left = [
            {"cid": ids[name], "ts": last_seen.get(name, poll.ts)} for name in going if name in ids
        ]
        for chunk in _chunks(became, 500):
            conn.execute(sql.SET_ACTIVE, {"ids": chunk})
        statements.executemany(conn, sql.SET_INACTIVE, left)

    def close(self) -> None:
        """Close the writer engine, leaving the file readable by a read-only API."""
        engines.close_writer(self.engine)


def _latest_closed(conn: Connection, host_id: int) -> tuple[dict[str, int], bool]:
    """Per source of the host, the latest Connected Since among its closed sessions, and
    whether ``sources`` holds it: the polls that close sessions keep it there; for a database
    from before that it is worked out once (a scan) and stored by the next poll."""
    stored = meta.source_values(conn, host_id, "closed_since")
    if stored:
        return {source: int(since) for source, since in stored.items()}, True
    s = schema.sessions
    rows = conn.execute(
        select(s.c.source, func.max(s.c.connected_since))
        .where(s.c.disconnected_at.is_not(None), s.c.host_id == host_id)
        .group_by(s.c.source)
    )
    return {source: int(since) for source, since in rows}, False


def _session_state(row: Any) -> SessionState:
    """A ``sessions`` row (joined with its client's common name) as accounting state."""
    return SessionState(
        source=row["source"],
        key=row["session_key"],
        connected_since=row["connected_since"],
        common_name=row["common_name"],
        bytes_received=row["bytes_received"],
        bytes_sent=row["bytes_sent"],
        baseline_received=row["baseline_received"],
        baseline_sent=row["baseline_sent"],
        real_address=row["real_address"],
        virtual_address=row["virtual_address"],
        virtual_ipv6=row["virtual_ipv6"],
        first_seen=row["first_seen"],
        last_seen=row["last_seen"],
        since_text=str(row["connected_since"]),
        row_id=row["id"],
    )


def _chunks(items: list[_T], size: int) -> Iterable[list[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
