"""One poll: read every source, account the snapshots, write the result in one transaction.

Every edge is injected (sources, store, clock) so tests drive it with a fake clock and real status
text. Sources are fetched at the same time, each in a thread of its own, and a poll waits for them
only up to ``read_wait`` seconds: one slow or hanging source never holds up another, and is
itself stored by the first poll that finds its read done. A source that fails is marked on its
health and retried next poll; a database that fails (locked, disk full) loses nothing: the
in-memory state is dropped and reloaded from the last committed poll, so the next successful poll
counts the bytes this one could not store. Whatever OpenVPN shows that it should not (a session
that comes back after it closed, a new common name on a known session, numbers too large to
store, counters that go down) is handled by the rules of docs/accounting.md and logged once.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from ovpnmon_collector.accounting import (
    SessionId,
    SessionState,
    SourceDelta,
    account_source,
    merge_sources,
    reopen,
)
from ovpnmon_collector.clock import SYSTEM_CLOCK, Clock
from ovpnmon_collector.parser import parse_status
from ovpnmon_collector.snapshot import Snapshot, StatusError
from ovpnmon_collector.sources import Source, SourceError
from ovpnmon_collector.spool import Spool, SpooledPoll
from ovpnmon_collector.store import PollWrite, Store
from ovpnmon_common.formatting import format_timestamp
from ovpnmon_common.storage import describe_error

log = logging.getLogger("ovpnmon.collector")

# At most this many oddities are remembered as logged (then they may be logged again).
ODDITIES_REMEMBERED = 100_000


@dataclass
class PollSummary:
    """What one poll did, for the daemon's status line, ``poll-once`` and tests."""

    ts: int
    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    pending: list[str] = field(default_factory=list)  # still reading: stored by a later poll
    stored: bool = False
    clients: int = 0
    sessions: int = 0
    error: str | None = None
    spooled: int = 0  # polls kept in the spool for when the database is back


class SourceReader:
    """Fetches one source's status text in a thread of its own, one read at a time.

    Only the fetching — what can wait or hang: a file settling, a socket — runs in the thread;
    the poll parses and accounts the text itself, so that the tens of thousands of objects a poll
    builds and walks stay in one core's caches (parsing in the reader thread cost 5-10 ms a
    poll of 10,000 sessions, measured). The thread lives as long as the process, a daemon
    thread: a read stuck in the kernel (a hung network file system) never keeps it from exiting.
    """

    def __init__(self, source: Source) -> None:
        self.source = source
        self.started: float | None = None  # time.monotonic() when the read under way began
        self._go = threading.Event()
        self._done = threading.Event()
        self._result: str | SourceError | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Begin a read, unless one is still under way or its result not yet taken."""
        if self.started is not None:
            return
        if self._thread is None:
            name = f"source {self.source.name}"
            self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
            self._thread.start()
        self.started = time.monotonic()
        self._done.clear()
        self._go.set()

    def wait(self, until: float) -> bool:
        """Wait for the read under way until ``time.monotonic()`` reaches ``until``."""
        return self._done.wait(max(0.0, until - time.monotonic()))

    def take(self) -> str | SourceError | None:
        """The finished read's text or error, or None while it is still going."""
        if self.started is None or not self._done.is_set():
            return None
        result, self._result, self.started = self._result, None, None
        return result

    def _loop(self) -> None:
        while True:
            self._go.wait()
            self._go.clear()
            self._read()

    def _read(self) -> None:
        try:
            self._result = self.source.read()
        except SourceError as exc:
            self._result = exc
        except Exception as exc:  # a bug: reported as the source's error, never lost silently
            log.exception("%s: reading failed unexpectedly", self.source.name)
            self._result = SourceError(f"reading failed unexpectedly: {type(exc).__name__}: {exc}")
        finally:
            self._done.set()


class Collector:
    """Polls every source and stores each poll in one transaction; the daemon's and
    ``poll-once``'s engine."""

    def __init__(
        self,
        store: Store,
        sources: Sequence[Source],
        *,
        interval: int = 10,
        stale_after: dict[str, int] | None = None,
        clock: Clock | None = None,
        read_wait: float | None = None,
        spool: Spool | None = None,
    ) -> None:
        self.store = store
        self.spool = spool
        self.sources = list(sources)
        self.interval = interval
        self.stale_after = stale_after or {}
        self.clock = clock or SYSTEM_CLOCK
        # How long a poll waits for its sources (real seconds: reads are real threads).
        self.read_wait = read_wait if read_wait is not None else min(2.0, interval / 2)
        self._readers = {source.name: SourceReader(source) for source in self.sources}
        self._state: dict[str, dict[SessionId, SessionState]] | None = None
        self._first_watched: dict[str, int] = {}
        # when the last poll read its sources (stored or spooled): the next one's interval
        self._last_read: float | None = None
        self._failure: DBAPIError | None = None  # the last database error
        self._last_duration: float | None = None  # of the last stored poll, stored by the next
        self._health: dict[str, dict[str, Any]] = {}
        self._told: set[tuple[str, str, SessionId]] = set()
        # per source, the sessions its last accepted snapshot showed (see _check_distinct)
        self._sessions_seen: dict[str, set[tuple[Any, ...]]] = {}

    def poll(self) -> PollSummary:
        """One poll of every source, stored in one transaction (or not at all)."""
        # A poll allocates tens of thousands of tuples that form no cycles; the cyclic collector
        # would walk the whole session state for each of its passes. It runs after the poll.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._poll()
        except Exception as exc:  # a bug must not stop the collector: start again from the DB
            summary = PollSummary(ts=int(self.clock.time()))
            summary.error = f"poll failed unexpectedly, will retry: {type(exc).__name__}: {exc}"
            if self._health.get("poll", {}).get("message") != summary.error:
                log.exception("poll failed unexpectedly")
            self._health["poll"] = {"state": "error", "message": summary.error}
            self._state = None
            self._last_read = None
            return summary
        finally:
            if paused:
                gc.enable()

    def _poll(self) -> PollSummary:
        now = int(self.clock.time())
        mono = self.clock.monotonic()
        summary = PollSummary(ts=now)
        reads = self._read_all(summary)
        interval = mono - self._last_read if self._last_read is not None else 0.0
        self._last_read = mono
        if self.spool is not None and len(self.spool):
            failed = self._replay()
            if failed is not None:  # the database is still away: this poll waits too
                summary.error = failed
                return self._keep(summary, reads, interval)
        stored = self._store(summary, now, mono, interval, reads)
        if not stored.stored:  # the one way _store fails: the database (_database_failed)
            return self._keep(stored, reads, interval)
        return stored

    def _replay(self) -> str | None:
        """Write the spooled polls, oldest first, each with its own time; stop at the first
        that cannot be written (its error is returned; it and the rest stay spooled)."""
        assert self.spool is not None
        by_name = {source.name: source for source in self.sources}
        written = 0
        for name in self.spool.names():
            kept = self.spool.load(name)
            if kept is None:
                continue
            summary = PollSummary(ts=kept.ts)
            reads: list[tuple[Source, str | SourceError]] = [
                (by_name[n], text) for n, text in kept.texts.items() if n in by_name
            ]
            reads += [(by_name[n], SourceError(e)) for n, e in kept.errors.items() if n in by_name]
            done = self._store(summary, kept.ts, None, kept.interval, reads)
            if not done.stored and not isinstance(
                self._failure, (OperationalError, InterfaceError)
            ):
                # the database answered and refused this poll: set it aside, never retry it
                # forever (each later poll would wait behind it)
                log.error("spooled poll %s refused by the database: set aside", name)
                self.spool.set_aside(name)
                continue
            if not done.stored:
                if written:
                    log.info("wrote %d spooled polls; %d left", written, len(self.spool))
                return done.error or "a spooled poll could not be written"
            self.spool.remove(name)
            written += 1
        if written:
            log.info("wrote %d spooled polls: the outage is in the history, exactly", written)
        return None

    def _keep(
        self, summary: PollSummary, reads: list[tuple[Source, str | SourceError]], interval: float
    ) -> PollSummary:
        """Spool what this poll read, for when the database is back (without a spool, or if
        it cannot be written, the next stored poll counts the bytes of sessions still open)."""
        if self.spool is None:
            self._last_read = None
            return summary
        texts = {s.name: t for s, t in reads if not isinstance(t, SourceError)}
        errors = {s.name: str(t) for s, t in reads if isinstance(t, SourceError)}
        try:
            self.spool.add(SpooledPoll(summary.ts, interval, texts, errors))
        except OSError as exc:
            self._last_read = None
            summary.error = f"{summary.error}; and the poll could not be spooled: {exc}"
            return summary
        summary.spooled = len(self.spool)
        summary.error = f"{summary.error} (kept in the spool: {summary.spooled} polls)"
        if summary.spooled == 1:
            log.warning(
                "database: keeping each poll in the spool (%s) until it can be written",
                self.spool.directory,
            )
        return summary

    def _store(
        self,
        summary: PollSummary,
        now: int,
        mono: float | None,
        interval: float,
        reads: list[tuple[Source, str | SourceError]],
    ) -> PollSummary:
        """Account ``reads`` (the sources' texts of the poll at ``now``) and write them in one
        transaction. ``mono``: when the poll began (None for a spooled poll)."""
        try:
            if self._state is None:
                self._state = self.store.load_open_sessions(now)
                self._health = self.store.health()
            for source in self.sources:
                if source.name not in self._first_watched:
                    self._first_watched[source.name] = self.store.first_watched(source.name, now)
        except DBAPIError as exc:
            return self._database_failed(summary, exc)

        changed_health: dict[str, dict[str, Any]] = {}
        results: list[tuple[Source, SourceDelta]] = []
        reopened: list[tuple[SessionState, int, int]] = []
        for source, text in reads:
            try:
                if isinstance(text, SourceError):
                    raise text
                outcome = parse_status(text)
                self._check_fresh(source, outcome, now)
                if len(self.sources) > 1:
                    self._check_distinct(source, outcome)
            except (SourceError, StatusError) as exc:
                summary.failed[source.name] = str(exc)
                self._set_health(source.name, "error", str(exc), now, changed_health)
                continue
            try:
                delta, back = self._account(source, outcome, now)
            except DBAPIError as exc:
                return self._database_failed(summary, exc)
            results.append((source, delta))
            reopened.extend(back)
            summary.ok.append(source.name)
            self._set_health(source.name, "ok", "", now, changed_health)
        for name in summary.pending:
            self._pending_health(name, now, changed_health)

        configured = {source.name for source in self.sources}
        retired = {name: st for name, st in self._state.items() if name not in configured}
        clients = merge_sources(delta for _, delta in results)
        new_state = {name: s for name, s in self._state.items() if name in configured}
        for source, delta in results:
            new_state[source.name] = delta.state
        # every session a source showed now has an entry in clients, even at zero bytes
        active = set(clients)
        for name in new_state.keys() - summary.ok:
            active.update(st.common_name for st in new_state[name].values())
        write = PollWrite(
            ts=now,
            interval=interval,
            configured_interval=self.interval,
            clients=clients,
            opened=[st for _, d in results for st in d.opened],
            open_now={source.name: delta for source, delta in results},
            moved=[st for _, d in results for st in d.moved],
            closed=[st for _, d in results for st in d.closed],
            reopened=reopened,
            rebased=[st for _, d in results for st in d.rebased],
            retired=[st for sessions in retired.values() for st in sessions.values()],
            retired_sources=sorted(retired),
            active=active,
            health=changed_health,
            last_poll_seconds=self._last_duration,
        )
        try:
            self.store.write_poll(write)
        except DBAPIError as exc:
            return self._database_failed(summary, exc)
        for name, sessions in retired.items():
            log.warning(
                "source %s is no longer configured: closed its %d open sessions at the last "
                "poll that saw them",
                name,
                len(sessions),
            )
        self._report([(source.name, delta) for source, delta in results])
        self._state = new_state
        if mono is not None:
            self._last_duration = self.clock.monotonic() - mono
        summary.stored = True
        summary.clients = len(active)
        summary.sessions = sum(len(s) for s in new_state.values())
        self._set_health("database", "ok", "", now, {})
        self._health.pop("poll", None)
        return summary

    def _read_all(self, summary: PollSummary) -> list[tuple[Source, str | SourceError]]:
        """Every source's text, all read at once; those not done within ``read_wait`` are left
        running and go to ``summary.pending``."""
        for reader in self._readers.values():
            reader.start()
        until = time.monotonic() + self.read_wait
        outcomes = []
        for source in self.sources:
            reader = self._readers[source.name]
            reader.wait(until)
            outcome = reader.take()
            if outcome is None:
                summary.pending.append(source.name)
            else:
                outcomes.append((source, outcome))
        return outcomes

    def _account(
        self, source: Source, snapshot: Snapshot, now: int
    ) -> tuple[SourceDelta, list[tuple[SessionState, int, int]]]:
        """Account one snapshot; a session that looks new but closed before with the same
        identity (a status that showed it missing for a while) is that session, reopened."""
        assert self._state is not None
        previous = self._state.get(source.name, {})
        first_watched = self._first_watched[source.name]
        delta = account_source(
            previous, snapshot, source=source.name, first_watched=first_watched, now=now
        )
        if not delta.opened:
            return delta, []
        back = self.store.closed_sessions(source.name, delta.opened)
        if not back:
            return delta, []
        for session, _, _ in back:
            self._tell(
                source.name,
                "reopened",
                session.ident,
                f"session {session.key} of {session.common_name!r} (connected "
                f"{session.connected_since}) is back after it was closed: reopened, and counted "
                "from its counters when it closed",
            )
        reopen(delta, [session for session, _, _ in back], now)
        return delta, back

    def _report(self, results: list[tuple[str, SourceDelta]]) -> None:
        for name, delta in results:
            for oddity in delta.oddities:
                self._tell(name, oddity.kind, oddity.session, oddity.message)

    def _tell(self, source: str, kind: str, session: SessionId, message: str) -> None:
        """Log an oddity the first time it is seen (not on every poll that shows it again)."""
        key = (source, kind, session)
        if key in self._told:
            return
        if len(self._told) >= ODDITIES_REMEMBERED:
            self._told.clear()
        self._told.add(key)
        level = logging.INFO if kind in ("floated", "reopened") else logging.WARNING
        log.log(level, "%s: %s", source, message)

    def close(self) -> None:
        """Stop using the database (the store closes its writer engine)."""
        self.store.close()

    def _check_fresh(self, source: Source, snapshot: Snapshot, now: int) -> None:
        limit = self.stale_after.get(source.name)
        if source.kind != "file" or limit is None or snapshot.time is None:
            return
        if now - snapshot.time > limit:
            # the time it was written, not its age: the message stays the same poll after poll,
            # so it is logged once
            raise SourceError(
                f"status file is stale: OpenVPN last wrote it at {format_timestamp(snapshot.time)} "
                f"UTC, more than {limit} s ago; is OpenVPN running, and is its 'status' interval "
                "shorter than stale_after?"
            )

    def _check_distinct(self, source: Source, snapshot: Snapshot) -> None:
        """Refuse a snapshot that shows the sessions another source showed at its last read: one
        OpenVPN read twice (its status file and its management interface, say) would count
        every byte twice. Sessions are the same if common name, Client ID, Connected Since,
        Real Address and virtual addresses are: two instances on one host serve different
        subnets, so no two share all of them."""
        mine = {
            (name, cid, since, real, v4, v6)
            for name, real, v4, v6, _, _, since, cid in snapshot.rows()
        }
        for other, theirs in self._sessions_seen.items():
            if other != source.name and not mine.isdisjoint(theirs):
                common = len(mine & theirs)
                raise SourceError(
                    f"shows the same sessions as source {other} ({common} in common): one "
                    f"OpenVPN read twice would be counted twice; keep one of [source:{other}] "
                    f"and [source:{source.name}] (its status file or its management interface)"
                )
        self._sessions_seen[source.name] = mine

    def _pending_health(self, name: str, now: int, changed: dict[str, dict[str, Any]]) -> None:
        """A read still under way is no error until it has run for several polls."""
        started = self._readers[name].started
        running = time.monotonic() - started if started is not None else 0.0
        if running > max(3 * self.interval, 2 * self.read_wait, 10.0):
            message = f"reading has taken {running:.0f} s so far and goes on"
            self._set_health(name, "error", message, now, changed)

    def _set_health(
        self, name: str, state: str, message: str, now: int, changed: dict[str, dict[str, Any]]
    ) -> None:
        """Record a source's state; log and store it only when it changes."""
        previous = self._health.get(name)
        if previous and previous.get("state") == state and previous.get("message") == message:
            if state == "ok":
                previous["last_ok"] = now
                if name != "database":
                    changed[name] = previous
            return
        entry = {"state": state, "message": message, "since": now}
        if state == "ok":
            entry["last_ok"] = now
            if previous is not None and previous.get("state") != "ok":
                log.info("%s: recovered", name)
        else:
            entry["last_ok"] = previous.get("last_ok") if previous else None
            log.warning("%s: %s", name, message)
        self._health[name] = entry
        if name != "database":
            changed[name] = entry

    def _database_failed(self, summary: PollSummary, exc: DBAPIError) -> PollSummary:
        message = describe_error(exc)
        self._failure = exc
        summary.error = f"database write failed, will retry next poll: {message}"
        self._set_health("database", "error", summary.error, summary.ts, {})
        # Drop what this poll accounted: the next poll starts again from what is committed.
        self._state = None
        return summary
