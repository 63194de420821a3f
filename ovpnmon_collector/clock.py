"""The collector's one clock protocol: wall time for timestamps, a monotonic clock for intervals
and deadlines, and sleeping. Everything that reads time takes one, so tests pass a fake."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """What the collector asks of time; ``SYSTEM_CLOCK`` in production, a hand-moved
    clock in tests (``ovpnmon_demo.clock.ManualClock``)."""

    def time(self) -> float: ...  # wall clock, epoch seconds: what timestamps are

    def monotonic(self) -> float: ...  # intervals, rates and deadlines

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clocks."""

    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


SYSTEM_CLOCK = SystemClock()
