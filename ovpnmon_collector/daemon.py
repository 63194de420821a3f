"""The collector's main loop: drift-free polls until SIGTERM/SIGINT, with systemd notifications."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from typing import Protocol

from ovpnmon_collector.collector import PollSummary
from ovpnmon_collector.notify import Notifier

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


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; the loop finishes its transaction and returns."""

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping after the current poll", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
