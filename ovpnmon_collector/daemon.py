"""The collector's main loop: drift-free polls until SIGTERM/SIGINT, with systemd notifications."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from ovpnmon_collector import rollup
from ovpnmon_collector.collector import Clock, PollSummary
from ovpnmon_collector.notify import Notifier
from ovpnmon_common.db import describe_operational_error

log = logging.getLogger("ovpnmon.collector")


class Pollable(Protocol):
    def poll(self) -> PollSummary: ...


def next_deadline(previous: float, interval: float, now: float) -> float:
    """The next poll time on the fixed grid ``previous + k*interval`` that is after ``now``.

    Polls never drift with the time a poll takes, and a poll that overran skips the slots it
    missed instead of firing them back to back.
    """
    deadline = previous + interval
    if deadline <= now:
        missed = int((now - deadline) // interval) + 1
        deadline += missed * interval
    return deadline


def run(
    collector: Pollable,
    interval: float,
    stop: threading.Event,
    *,
    notifier: Notifier | None = None,
    monotonic: Callable[[], float],
    extra: Callable[[], None] | None = None,
) -> None:
    """Poll every ``interval`` seconds until ``stop`` is set; the poll under way always finishes."""
    notifier = notifier or Notifier()
    deadline = monotonic()
    notifier.ready()
    while not stop.is_set():
        summary = collector.poll()
        notifier.watchdog()  # liveness: a failing source or database is health, not a hang
        if summary.stored:
            notifier.status(f"{summary.clients} clients, {summary.sessions} sessions")
        if extra is not None:
            extra()
        deadline = next_deadline(deadline, interval, monotonic())
        stop.wait(max(0.0, deadline - monotonic()))
    notifier.stopping()


class Maintenance:
    """Rollups between polls: at most every ``every`` seconds, within half the poll interval.

    Each rollup bucket is its own short transaction and the work stops when its time slice is
    spent, so a long catch-up (after downtime) never delays a poll; it resumes after the next one.
    """

    def __init__(self, engine: Engine, clock: Clock, interval: float, every: float = 60.0) -> None:
        self.engine = engine
        self.clock = clock
        self.interval = interval
        self.every = every
        self.due = clock.monotonic()
        self.failing = False

    def run(self) -> None:
        start = self.clock.monotonic()
        if start < self.due:
            return
        self.due = start + self.every
        try:
            rollup.catch_up(
                self.engine,
                int(self.clock.time()),
                deadline=start + self.interval / 2,
                clock=self.clock.monotonic,
            )
        except DBAPIError as exc:
            if not self.failing:
                log.warning("rollup failed, will retry: %s", describe_operational_error(exc))  # type: ignore[arg-type]
            self.failing = True
            return
        if self.failing:
            log.info("rollup recovered")
        self.failing = False


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; the loop finishes its transaction and returns."""

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping after the current poll", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
