"""The collector's main loop: drift-free polls until SIGTERM/SIGINT, with systemd notifications."""

from __future__ import annotations

import ctypes
import logging
import signal
import threading
from collections.abc import Callable
from typing import Protocol

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from ovpnmon_collector import certs, pack, prune, rollup
from ovpnmon_collector.clock import SYSTEM_CLOCK, Clock
from ovpnmon_collector.collector import PollSummary
from ovpnmon_collector.notify import Notifier
from ovpnmon_common.buckets import align
from ovpnmon_common.config import RetentionConfig, default_host
from ovpnmon_common.storage import describe_error
from ovpnmon_common.tiers import BY_NAME

log = logging.getLogger("ovpnmon.collector")

QUARTER = BY_NAME["quarter_hour"].width or 0


class Pollable(Protocol):
    """What ``run`` polls: the ``Collector``, or a test's stand-in."""

    def poll(self) -> PollSummary:
        """One poll, stored or not; never raises."""
        ...


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
    clock: Clock = SYSTEM_CLOCK,
    extra: Callable[[], None] | None = None,
) -> None:
    """Poll every ``interval`` seconds until ``stop`` is set; the poll under way always finishes.

    The systemd watchdog is fed after every poll and every piece of maintenance, and while
    waiting between polls on its own schedule (half of ``WatchdogSec``), whatever the interval:
    a poll and a slice of maintenance are bounded, so a missing ping means a hang. A failing
    source or database is health, not a hang, and does not stop the pings.
    """
    notifier = notifier or Notifier()
    deadline = clock.monotonic()
    notifier.ready()
    while not stop.is_set():
        summary = collector.poll()
        notifier.watchdog()
        if summary.stored:
            notifier.status(f"{summary.clients} clients, {summary.sessions} sessions")
        if extra is not None:
            extra()
            notifier.watchdog()
        deadline = next_deadline(deadline, interval, clock.monotonic())
        while not stop.is_set():
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                break
            if notifier.watchdog_every is None:
                stop.wait(remaining)
            elif not stop.wait(min(remaining, notifier.watchdog_every)):
                notifier.watchdog()
    notifier.stopping()


class Maintenance:
    """Work between polls: the 15-minute bucket in progress summed after every poll
    (``rollup.sum_recent``), rollups every minute and after the first poll of each 15-minute
    bucket, retention every hour, the certificate scan at start, hourly, and within a minute of
    a change to the certificate paths or the CRL; last, with what time is left, packing the raw
    samples of final buckets (every minute: it can wait, and after an upgrade it has the whole
    history to go through).

    Rollup, prune and packing work in short transactions and stop when their time slice (half the
    poll interval, and at most ``slice_limit``: the watchdog's period) is spent, so a long catch-up
    after downtime never delays a poll; it resumes after the next one. A failure is logged once
    and retried.
    """

    def __init__(
        self,
        engine: Engine,
        clock: Clock,
        interval: float,
        retention: RetentionConfig | None = None,
        certificate_paths: tuple[str, ...] = (),
        crl: str | None = None,
        slice_limit: float | None = None,
        host: str | None = None,
    ) -> None:
        self.engine = engine
        self.host = host or default_host()
        self.clock = clock
        self.interval = interval
        self.slice = min(interval / 2, slice_limit) if slice_limit else interval / 2
        self.retention = retention or RetentionConfig()
        self.certificate_paths = certificate_paths
        self.crl = crl
        now = clock.monotonic()
        self.due = {
            "rollup": now,
            "recent": now,
            "prune": now + 300,
            "certificates": now,
            "pack": now,
        }
        # the bucket in progress summed after every poll (``recent``); the certificate job looks
        # every minute, and scans when the files changed or hourly
        self.every = {
            "rollup": 60.0,
            "recent": 0.0,
            "prune": 3600.0,
            "certificates": 60.0,
            "pack": 60.0,
        }
        self.failing: set[str] = set()
        self._rolled_in: int | None = None  # the 15-minute bucket the rollups last ran in
        self._certificates_seen: tuple[object, ...] | None = None
        self._certificates_scanned = now

    def run(self) -> None:
        """Run the jobs that are due (rollup, prune, certificate scan, packing), each within this
        call's slice of time; a job that did not finish goes on next call."""
        start = self.clock.monotonic()
        deadline = start + self.slice
        if (
            align(int(self.clock.time()), QUARTER) != self._rolled_in
            and "rollup" not in self.failing
        ):
            # a 15-minute bucket ended since the rollups last ran: they close it now, so that
            # the one begun is summed after this poll (``recent``), not after the minute is up
            self.due["rollup"] = min(self.due["rollup"], start)
        # the bucket in progress summed after the rollups, which may have closed the last one
        for job in ("rollup", "recent", "prune", "certificates", "pack"):
            if start < self.due[job] or self.clock.monotonic() >= deadline:
                continue
            try:
                finished = self._job(job, deadline)
            except (DBAPIError, RuntimeError) as exc:
                if job not in self.failing:
                    log.warning("%s failed, will retry: %s", job, describe_error(exc))
                self.failing.add(job)
                self.due[job] = start + self.every["rollup"]
                continue
            if job in self.failing:
                log.info("%s recovered", job)
                self.failing.discard(job)
            # unfinished work continues at the next chance instead of waiting a whole period
            self.due[job] = start + (self.every[job] if finished else 0)

    def _job(self, job: str, deadline: float) -> bool:
        now = int(self.clock.time())
        if job == "recent":
            rollup.sum_recent(self.engine, now)
            return True
        if job == "rollup":
            rollup.catch_up(self.engine, now, deadline=deadline, clock=self.clock)
            self._rolled_in = align(now, QUARTER)
            return True
        if job == "pack":
            pack.catch_up(self.engine, deadline=deadline, clock=self.clock)
            return self.clock.monotonic() < deadline  # stopped by the deadline: more to do
        if job == "prune":
            report = prune.prune(
                self.engine, self.retention, now, deadline=deadline, clock=self.clock
            )
            deleted = sum(report.deleted.values())
            if deleted:
                log.info("retention: deleted %d rows", deleted)
            return report.complete
        if self.certificate_paths:
            seen = certs.fingerprint(self.certificate_paths, self.crl)
            hourly = self.clock.monotonic() - self._certificates_scanned >= 3600
            if seen != self._certificates_seen or hourly:
                report_c = certs.scan(self.certificate_paths, self.crl)
                certs.store(self.engine, report_c, now, self.host)
                self._certificates_seen = seen
                self._certificates_scanned = self.clock.monotonic()
        return True


# glibc's mallopt parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 16 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Ask the C library to keep memory a poll frees for the next poll; True if it agreed.

    A poll of a large status file allocates and frees some 10 MB of text and lists (2.2 MB of
    text for 10,000 sessions, then slices and splits of it). By default glibc maps the large
    blocks afresh, and hands freed memory at the top of the heap back, every poll; each page is
    then a page fault when the next poll touches it: about 1,200 a poll at 10,000 sessions, 1-5 ms
    of a 40 ms poll on this project's benchmark machine. With blocks under ``mmap_threshold``
    taken from the heap and up to ``trim_threshold`` of free heap kept, steady polls fault
    nothing. Peak memory is unchanged (the heap stays the size one poll needs). Where the C
    library has no ``mallopt`` (musl, macOS) this does nothing and returns False.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )


def stop_on_signals(stop: threading.Event) -> None:
    """SIGTERM and SIGINT set ``stop``; the loop finishes its transaction and returns."""

    def handler(signum: int, _frame: object) -> None:
        log.info("received %s, stopping after the current poll", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
