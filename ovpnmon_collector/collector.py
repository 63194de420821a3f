"""One poll: read every source, account the snapshots, write the result in one transaction.

Every edge is injected (sources, engine, clock, sleep) so tests drive it with a fake clock and real
status text. A source that fails is marked on its health and retried next poll; a database that
fails (locked, disk full) loses nothing: the in-memory state is dropped and reloaded from the last
committed poll, so the next successful poll counts the bytes this one could not store.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from ovpnmon_collector.accounting import (
    SessionId,
    SessionState,
    SourceDelta,
    account_source,
    merge_sources,
)
from ovpnmon_collector.clock import SYSTEM_CLOCK, Clock
from ovpnmon_collector.parser import Snapshot, StatusError, parse_status
from ovpnmon_collector.sources import Source, SourceError
from ovpnmon_collector.store import PollWrite, Store
from ovpnmon_common.db import describe_error

log = logging.getLogger("ovpnmon.collector")

@dataclass
class PollSummary:
    ts: int
    ok: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    stored: bool = False
    clients: int = 0
    sessions: int = 0
    error: str | None = None


class Collector:
    def __init__(
        self,
        engine: Engine,
        sources: Sequence[Source],
        *,
        interval: int = 10,
        stale_after: dict[str, int] | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.store = Store(engine)
        self.sources = list(sources)
        self.interval = interval
        self.stale_after = stale_after or {}
        self.clock = clock or SYSTEM_CLOCK
        self._state: dict[str, dict[SessionId, SessionState]] | None = None
        self._first_watched: dict[str, int] = {}
        self._last_poll: float | None = None
        self._health: dict[str, dict[str, Any]] = {}

    def poll(self) -> PollSummary:
        """One poll of every source, stored in one transaction (or not at all)."""
        # A poll allocates tens of thousands of tuples that form no cycles; the cyclic collector
        # would walk the whole session state for each of its passes. It runs after the poll.
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._poll()
        finally:
            if paused:
                gc.enable()

    def _poll(self) -> PollSummary:
        now = int(self.clock.time())
        mono = self.clock.monotonic()
        summary = PollSummary(ts=now)
        try:
            if self._state is None:
                self._state = self.store.load_open_sessions()
                self._health = self.store.health()
            for source in self.sources:
                if source.name not in self._first_watched:
                    self._first_watched[source.name] = self.store.first_watched(source.name, now)
        except DBAPIError as exc:
            return self._database_failed(summary, exc)

        results: list[tuple[Source, SourceDelta]] = []
        changed_health: dict[str, dict[str, Any]] = {}
        for source in self.sources:
            try:
                snapshot = self._read(source)
                self._check_fresh(source, snapshot, now)
            except (SourceError, StatusError) as exc:
                summary.failed[source.name] = str(exc)
                self._set_health(source.name, "error", str(exc), now, changed_health)
                continue
            delta = account_source(
                self._state.get(source.name, {}),
                snapshot,
                source=source.name,
                first_watched=self._first_watched[source.name],
                now=now,
            )
            results.append((source, delta))
            summary.ok.append(source.name)
            self._set_health(source.name, "ok", "", now, changed_health)

        clients = merge_sources(delta for _, delta in results)
        new_state = dict(self._state)
        for source, delta in results:
            new_state[source.name] = delta.state
        # every session a source showed now has an entry in clients, even at zero bytes
        active = set(clients)
        for name in new_state.keys() - summary.ok:
            active.update(st.common_name for st in new_state[name].values())
        write = PollWrite(
            ts=now,
            interval=mono - self._last_poll if self._last_poll is not None else 0.0,
            configured_interval=self.interval,
            clients=clients,
            opened=[st for _, d in results for st in d.opened],
            open_now={source.name: delta for source, delta in results},
            moved=[st for _, d in results for st in d.moved],
            closed=[st for _, d in results for st in d.closed],
            active=active,
            health=changed_health,
        )
        try:
            self.store.write_poll(write)
        except DBAPIError as exc:
            return self._database_failed(summary, exc)
        self._state = new_state
        self._last_poll = mono
        summary.stored = True
        summary.clients = len(active)
        summary.sessions = sum(len(s) for s in new_state.values())
        self._set_health("database", "ok", "", now, {})
        return summary

    def close(self) -> None:
        self.store.close()

    def _read(self, source: Source) -> Snapshot:
        return parse_status(source.read())

    def _check_fresh(self, source: Source, snapshot: Snapshot, now: int) -> None:
        limit = self.stale_after.get(source.name)
        if source.kind != "file" or limit is None or snapshot.time is None:
            return
        age = now - snapshot.time
        if age > limit:
            raise SourceError(
                f"status file is stale: OpenVPN last wrote it {age} s ago (more than {limit} s); "
                "is OpenVPN running, and is its 'status' interval shorter than stale_after?"
            )

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
        summary.error = f"database write failed, will retry next poll: {message}"
        self._set_health("database", "error", summary.error, summary.ts, {})
        # Drop what this poll accounted: the next poll starts again from what is committed.
        self._state = None
        self._last_poll = None
        return summary
