"""Simulated status text through the collector's own poll path, here or in a child process.

``StatusPoller`` is the collector's side of a simulation: it rewrites the status file in place as
OpenVPN does, sets the injected clock to the poll's time and polls with the real ``Collector``; a
poll that stores nothing raises.

``poll_in_child`` runs one in a child process, so that a benchmark's simulation (stepping the
world, rendering its status text, keeping its own reference) runs on one core while the collector
polls, rolls up and packs on the other, at once instead of in turn. The child opens the database
itself (an SQLite connection must not cross a fork); the texts go to it over a pipe, up to
``AHEAD`` polls ahead.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
import time
import traceback
from collections.abc import Callable, Iterable
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from sqlalchemy import Engine

from ovpnmon_common.buckets import DAY
from ovpnmon_common.config import RetentionConfig
from ovpnmon_demo.clock import ManualClock
from ovpnmon_demo.simulator import write_in_place


class StatusPoller:
    """Polls simulated status text with the real collector, clock injected."""

    def __init__(
        self, engine: Engine, status_path: str, interval: int, start: int, source: str = "udp"
    ) -> None:
        from ovpnmon_collector.collector import Collector
        from ovpnmon_collector.sources import StatusFileSource
        from ovpnmon_collector.store import Store

        self.status_path = status_path
        self.clock = ManualClock(start, 1000.0)
        self.collector = Collector(
            Store(engine),
            [StatusFileSource(source, status_path, settle=0)],
            interval=interval,
            clock=self.clock,
        )

    def poll(self, now: int, text: str) -> None:
        """OpenVPN writes ``text`` at ``now``; the collector polls it and stores the poll."""
        self.clock.set(now)
        write_in_place(self.status_path, text)
        summary = self.collector.poll()
        if not summary.stored or summary.failed:
            raise RuntimeError(f"simulated poll at {now} failed: {summary}")


# after(engine, now): the child's work after each stored poll (the rollups as buckets close)
After = Callable[[Engine, int], None]


def closing_buckets(
    pack_samples: bool = True,
    width: int | None = None,
    retention: RetentionConfig | None = None,
) -> After:
    """An ``after`` that does as the daemon between polls: the rollups (and packing, unless
    ``pack_samples`` is False) as each 15-minute bucket closes, so that a loaded database grows
    as the daemon's does. ``width``: ``pack.catch_up``'s first slice (None: the daemon's; with
    no poll waiting beside it a loader may pack a whole bucket in one transaction).
    ``retention``: also delete what it no longer keeps, once a day of the polls' time (the
    daemon does every hour), so that the tables stay the size the daemon keeps them: a year
    loaded without it holds every sample and session of the year until the end, and each poll
    writes into indexes millions of rows deep."""
    from ovpnmon_collector import pack, rollup
    from ovpnmon_collector.prune import prune
    from ovpnmon_common.tiers import BY_NAME

    bucket = BY_NAME["quarter_hour"].width
    assert bucket is not None
    packer = pack.catch_up if width is None else partial(pack.catch_up, width=width)
    last: list[int | None] = [None]
    pruned: list[int | None] = [None]

    def after(engine: Engine, now: int) -> None:
        if now // bucket != last[0]:
            last[0] = now // bucket
            rollup.catch_up(engine, now)
            if pack_samples:
                packer(engine)
        if retention is not None and now // DAY != pruned[0]:
            pruned[0] = now // DAY
            prune(engine, retention, now)

    return after


# How many polls the simulation may run ahead of the child. While the child packs a closed
# bucket (seconds at 10,000 clients) the simulation goes on rendering instead of waiting; at
# 10,000 clients 64 texts are about 100 MB.
AHEAD = 64


def poll_in_child(
    database: str,
    status_path: str,
    interval: int,
    texts: Iterable[tuple[int, str]],
    after: After | None = None,
    source: str = "udp",
) -> dict[str, float]:
    """Poll every ``(time, status text)`` of ``texts`` into ``database`` (a file; its schema made)
    in a child process, ``after(engine, time)`` there after each. ``texts`` is drawn here, up to
    ``AHEAD`` polls ahead of the child. Returns seconds: the child's ``polls`` and ``after``,
    and ``waited``, how long this process waited for the child (0: the simulation was the
    slower). If ``texts`` raises, the child polls what was drawn before, then stops."""
    context = multiprocessing.get_context("fork")  # the child needs ``after``, a closure maybe
    ours, theirs = context.Pipe()
    child = context.Process(
        target=_child,
        args=(ours, theirs, database, status_path, interval, after, source),
        daemon=True,
    )
    child.start()
    theirs.close()  # the child's end is the child's: a write after it died fails, not hangs
    sender = _Sender(ours)
    waited = 0.0
    outcome: tuple[str, Any] | None = None
    try:
        for now, text in texts:
            if sender.broken:  # it failed, or died: its outcome says which
                break
            waited += sender.send(now.to_bytes(8, "big") + text.encode())
        else:
            waited += sender.send(b"")  # the end of the input
        sender.close()  # all of it sent (or the child gone)
        with contextlib.suppress(EOFError, ConnectionResetError):  # died: no outcome
            outcome = ours.recv()  # "ok" and its timings, or why it failed
    finally:
        # if ``texts`` raised: what it gave before is polled, then our end closes, which is the
        # end of the child's input
        sender.close()
        ours.close()
        child.join()
    if outcome is None:
        raise RuntimeError(f"the polling process died (exit code {child.exitcode})")
    kind, detail = outcome
    if kind != "ok":
        raise RuntimeError(f"the polling process failed:\n{detail}")
    return {**detail, "waited": waited}


class _Sender:
    """Sends the status texts to the child from a thread, at most ``AHEAD`` of them queued.

    A text (1.5 MB at 10,000 clients) is several times what the pipe buffers, so a send from the
    simulation's own thread returned only once the child had read it: the simulation waited
    out each of the child's rollups and packings (3 s a closed bucket), one poll ahead. The
    thread's writes release the interpreter's lock, so the simulation runs on meanwhile."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._queue: queue.Queue[bytes | None] = queue.Queue(AHEAD)
        self.broken = False  # the child's end is gone: what is queued is dropped
        self._thread = threading.Thread(target=self._run, name="status-texts", daemon=True)
        self._thread.start()

    def send(self, message: bytes) -> float:
        """Queue ``message``; returns the seconds spent waiting for room."""
        began = time.perf_counter()
        self._queue.put(message)
        return time.perf_counter() - began

    def close(self) -> None:
        """Return once everything queued is sent (or dropped, the child gone). Idempotent."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join()

    def _run(self) -> None:
        while (message := self._queue.get()) is not None:
            if self.broken:
                continue  # taken off the queue all the same, so that ``send`` never blocks
            try:
                self._conn.send_bytes(message)
            except (BrokenPipeError, ConnectionResetError):
                self.broken = True


def _child(
    parents: Connection,
    conn: Connection,
    database: str,
    status_path: str,
    interval: int,
    after: After | None,
    source: str,
) -> None:
    from ovpnmon_collector.daemon import keep_freed_memory
    from ovpnmon_common.storage import engines

    parents.close()  # forked with it: the parent's closing it is then our end of input
    keep_freed_memory()  # as the daemon polls
    took = {"polls": 0.0, "after": 0.0}
    engine = engines.writer_engine(database)
    outcome: tuple[str, Any]
    try:
        poller: StatusPoller | None = None
        while message := conn.recv_bytes():
            now, text = int.from_bytes(message[:8], "big"), message[8:].decode()
            began = time.perf_counter()
            if poller is None:
                poller = StatusPoller(engine, status_path, interval, now, source)
            poller.poll(now, text)
            polled = time.perf_counter()
            took["polls"] += polled - began
            if after is not None:
                after(engine, now)
                took["after"] += time.perf_counter() - polled
        outcome = ("ok", took)
    except BaseException:  # said to the parent, which raises it
        outcome = ("error", traceback.format_exc())
    finally:
        engines.close_writer(engine)
    with contextlib.suppress(OSError):  # the parent gone (it failed itself): nobody to tell
        conn.send(outcome)
    conn.close()
