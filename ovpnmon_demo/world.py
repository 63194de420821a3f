"""A world to measure against: clients of four classes with a day/night rhythm, reconnecting,
OpenVPN restarting, the collector down for a while; and the exact reference of what the polls
showed, computed apart from ovpnmon's code.

``Dataset`` is deterministic for a seed. N clients of four classes (idle, office hours, heavy
evenings, always-on site links) connect and disconnect (each reconnect a new session, counters
from zero); OpenVPN restarts once a day (every session at once, client ids handed out again);
the collector (and any exporter) is down for 20 minutes once a day: a gap, no poll. Bytes move
only at poll instants and a session closes just after the last poll that saw it, so what the
status shows at the polls is the whole truth.

``Reference`` is that truth per client and 15-minute bucket: each session's counters minus what
the previous poll showed of it (a new session counted in full), at the bucket of the poll.
``feed`` polls a dataset through the collector's own path. ``bench/vs_prometheus.py`` measures
ovpnmon and Prometheus against it; ``tests/test_world.py`` checks that ovpnmon's answers equal it.
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache

from sqlalchemy import Engine

from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_common.buckets import DAY, MINUTE

BUCKET = 15 * MINUTE  # the reference's buckets: the 15-minute tier's
GAP = 20 * MINUTE  # how long the collector is down once a day


@dataclass(frozen=True)
class Kind:
    """A class of client: how busy at its daily peak, when it is connected, how long a
    session lasts (mean, seconds)."""

    name: str
    weight: float
    peak: float  # bytes a second received by the server at its daily peak
    presence: float  # share of its day it wants to be connected, at its peak
    session: float  # mean session length
    night: float  # how much of the peak is left at the opposite hour


KINDS = (
    Kind("idle", 0.40, 300.0, 0.5, 8 * 3600, 0.5),
    Kind("office", 0.35, 20_000.0, 0.9, 4 * 3600, 0.02),
    Kind("heavy", 0.15, 400_000.0, 0.8, 2 * 3600, 0.05),
    Kind("site", 0.10, 50_000.0, 1.0, math.inf, 0.6),
)


@dataclass
class Person:
    name: str
    kind: Kind
    phase: float  # hour of its daily peak
    session: list[int] | None = None  # [client id, connected since, received, sent]


@dataclass
class Dataset:
    """The deterministic world both systems watch (see the module's docstring)."""

    clients: int
    start: int
    end: int
    interval: int
    seed: int = 19
    first: int = 0  # the number of the first client's name (user-<first>, ...)
    people: list[Person] = field(init=False)
    restarts: set[int] = field(init=False)  # poll times just after an OpenVPN restart
    gaps: list[tuple[int, int]] = field(init=False)  # [from, to): no poll, no scrape
    _rng: random.Random = field(init=False)
    _next_id: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        rng = random.Random(self.seed)
        weights = [kind.weight for kind in KINDS]
        self.people = [
            Person(f"user-{i:05d}", rng.choices(KINDS, weights)[0], rng.uniform(7, 23))
            for i in range(self.first, self.first + self.clients)
        ]
        self.restarts, self.gaps = set(), []
        for day in range(self.start // DAY, self.end // DAY + 1):
            at = day * DAY + rng.randrange(DAY) // self.interval * self.interval
            if self.start < at < self.end:
                self.restarts.add(at)
            # on the poll grid, unless polls are further apart than a gap lasts: there a daily
            # poll fell in the day's gap (the grid's midnight) every day, and a history polled
            # once a day from a start within 20 minutes after midnight had no poll at all
            down = rng.randrange(DAY)
            if self.interval <= GAP:
                down = down // self.interval * self.interval
            down += day * DAY
            if self.start < down and down + GAP < self.end:
                self.gaps.append((down, down + GAP))
        self._rng = random.Random(self.seed + 1)

    def polls(self) -> Iterator[tuple[int, list[SessionRow]]]:
        """(time, the sessions a status file lists then) at every poll, oldest first."""
        previous = None
        for now in range(self.start, self.end, self.interval):
            if any(down <= now < up for down, up in self.gaps):
                continue
            elapsed = now - previous if previous is not None else 0
            previous = now
            yield now, self._step(now, elapsed)

    def _step(self, now: int, elapsed: int) -> list[SessionRow]:
        rng = self._rng
        if now in self.restarts:  # every session gone, ids handed out from 0 again
            self._next_id = 0
            for person in self.people:
                if person.session is not None:
                    person.session = self._open(now - rng.randrange(self.interval))
        hour = (now % DAY) / 3600
        rows: list[SessionRow] = []
        # the loop runs for every client at every poll: names looked up once, rows made as the
        # tuples they are (the world of 10,000 clients is half of a benchmark's simulation)
        random, cos, pi, row, new = rng.random, math.cos, math.pi, SessionRow, tuple.__new__
        addresses, append, interval = self._addresses, rows.append, self.interval
        for person in self.people:
            kind = person.kind
            level = 0.5 + 0.5 * cos((hour - person.phase) / 24 * 2 * pi)
            level = kind.night + (1 - kind.night) * level
            session = person.session
            if session is not None and random() < elapsed / kind.session:
                person.session = session = None  # closed just after the last poll that saw it
            if session is None:
                if random() < kind.presence * level * interval / 1800:
                    person.session = session = self._open(now - rng.randrange(interval))
                    elapsed_here = now - session[1]
                else:
                    continue
            else:
                elapsed_here = elapsed
            # rng.uniform(a, b) is a + (b - a) * rng.random(): the same numbers, without the call
            rate = kind.peak * level * (0.3 + 1.4 * random())
            session[2] += int(rate * elapsed_here)
            session[3] += int(rate * elapsed_here * (0.05 + 0.55 * random()))
            cid, since, rx, tx = session
            real, virtual = addresses(cid)
            # (common name, real address, virtual address, IPv6, rx, tx, since, client id)
            append(new(row, (person.name, real, virtual, "", rx, tx, since, cid)))
        return rows

    @staticmethod
    @lru_cache(maxsize=1 << 17)
    def _addresses(cid: int) -> tuple[str, str]:
        """(real address, virtual address) of client id ``cid``: text, never dialled."""
        high, low = f"{cid // 62500 % 250}.{cid // 250 % 250}", cid % 250
        return f"127.{high}.{low + 1}:1194", f"10.{high}.{low + 2}"

    def _open(self, since: int) -> list[int]:
        cid = self._next_id
        self._next_id += 1
        return [cid, since, 0, 0]


class Reference:
    """Per client, per 15-minute bucket: the bytes the polls showed it moved (the accounting
    rule, written here apart from ovpnmon's). A session already connected when the first poll
    came (before the source was first watched) is a baseline: what it moved before is not
    counted, as docs/accounting.md says."""

    def __init__(self) -> None:
        self.first_poll: int | None = None
        self.seen: dict[tuple[str, int, int], tuple[int, int]] = {}
        self.buckets: dict[str, dict[int, list[int]]] = defaultdict(dict)
        self.samples = 0  # counter values shown: two per session per poll

    def poll(self, now: int, rows: list[SessionRow]) -> None:
        if self.first_poll is None:
            self.first_poll = now
        bucket = now - now % BUCKET
        seen: dict[tuple[str, int, int], tuple[int, int]] = {}
        for row in rows:
            key = (row.common_name, row.client_id or 0, row.connected_since)
            now_ = seen[key] = (row.bytes_received, row.bytes_sent)
            before = self.seen.get(key)
            if before is None:  # new: counted in full, unless connected before the first poll
                before = now_ if row.connected_since < self.first_poll else (0, 0)
            entry = self.buckets[row.common_name].setdefault(bucket, [0, 0])
            entry[0] += now_[0] - before[0]
            entry[1] += now_[1] - before[1]
        self.seen = seen
        self.samples += 2 * len(rows)

    def client(self, name: str, start: int, end: int, step: int) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for bucket, (rx, tx) in self.buckets[name].items():
            if start <= bucket < end:
                entry = out[bucket - (bucket - start) % step]
                entry[0] += rx
                entry[1] += tx
        return out

    def server(self, start: int, end: int, step: int) -> dict[int, list[int]]:
        out: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        for name in self.buckets:
            for bucket, (rx, tx) in self.client(name, start, end, step).items():
                out[bucket][0] += rx
                out[bucket][1] += tx
        return out

    def top(self, start: int, end: int, limit: int = 10) -> list[tuple[str, int]]:
        """The ``limit`` clients with most bytes in ``[start, end)``, most first; ties in the
        order they were first seen; clients without a byte left out (as ``/analytics``)."""
        totals = []
        for name in self.buckets:  # in the order first seen
            sums = self.client(name, start, end, end - start)
            total = sum(rx + tx for rx, tx in sums.values())
            if total:
                totals.append((name, total))
        totals.sort(key=lambda x: -x[1])  # stable: ties stay in the order first seen
        return totals[:limit]


def feed(
    dataset: Dataset,
    engine: Engine,
    status_path: str,
    each: Callable[[int, list[SessionRow]], None] = lambda now, rows: None,
) -> None:
    """Every poll of ``dataset`` through the collector's own path (the status file written,
    the real ``Collector`` polling it, its clock set to the poll's time), into ``engine``'s
    database; ``each(now, rows)`` after each stored poll. No rollup."""
    from ovpnmon_demo.polling import StatusPoller
    from ovpnmon_demo.simulator import render_status

    poller = StatusPoller(engine, status_path, dataset.interval, dataset.start)
    for now, rows in dataset.polls():
        poller.poll(now, render_status(rows, now))
        each(now, rows)
