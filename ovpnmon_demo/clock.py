"""The one hand-moved clock, for the simulator, the tests and the benchmarks: it satisfies
``ovpnmon_collector.clock.Clock``, and its wall and monotonic times may step independently (a
test sets ``wall`` back to step the clock; ``mono`` never goes back on its own)."""

from __future__ import annotations


class ManualClock:
    """Wall and monotonic clocks moved by hand."""

    def __init__(self, wall: float = 1_795_717_500.0, mono: float = 1000.0) -> None:
        self.wall = wall
        self.mono = mono

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        """Both clocks move on by ``seconds``."""
        self.wall += seconds
        self.mono += seconds

    def set(self, wall: float) -> None:
        """Move on to wall time ``wall``; the monotonic clock moves by as much."""
        self.advance(wall - self.wall)

    def sleep(self, seconds: float) -> None:
        self.advance(seconds)
