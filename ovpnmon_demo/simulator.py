"""Status text in OpenVPN's own formats, for simulated clients: the demo, benchmarks and tests.

``render_status`` writes exactly what OpenVPN 2.6 writes (compare ``tests/fixtures``), so whatever
reads a simulation reads it through the same parser as a real server.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from sqlalchemy import Engine

from ovpnmon_collector.snapshot import SessionRow

TITLE = (
    "OpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL] [PKCS11] [MH/PKTINFO] "
    "[AEAD] [DCO]"
)
_COLUMNS = (
    "Common Name",
    "Real Address",
    "Virtual Address",
    "Virtual IPv6 Address",
    "Bytes Received",
    "Bytes Sent",
    "Connected Since",
    "Connected Since (time_t)",
    "Username",
    "Client ID",
    "Peer ID",
    "Data Channel Cipher",
)


def _local(ts: int) -> str:
    """``ts`` as OpenVPN prints it, in the process's local time (``TZ``)."""
    return _local_in(ts, os.environ.get("TZ"))


@lru_cache(maxsize=65536)
def _local_in(ts: int, _zone: str | None) -> str:
    # kept per TZ: a session's Connected Since is printed again at every poll (thousands of
    # rows a poll in the benchmarks), and TZ may change between renders
    try:
        return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")
    except (OverflowError, ValueError, OSError):  # a time no calendar of OpenVPN's prints
        return "9999-12-31 23:59:59"


def render_status(sessions: Iterable[SessionRow], written: int, version: int = 3) -> str:
    """The status file OpenVPN would write at ``written`` for ``sessions`` (version 1, 2 or 3)."""
    sessions = list(sessions)
    when = _local(written)
    if version == 1:
        lines = [
            "OpenVPN CLIENT LIST",
            f"Updated,{when}",
            "Common Name,Real Address,Bytes Received,Bytes Sent,Connected Since",
        ]
        lines += [
            f"{s.common_name},{s.real_address},{s.bytes_received},{s.bytes_sent},"
            f"{_local(s.connected_since)}"
            for s in sessions
        ]
        lines += ["ROUTING TABLE", "Virtual Address,Common Name,Real Address,Last Ref"]
        lines += [
            f"{s.virtual_address},{s.common_name},{s.real_address},{when}"
            for s in sessions
            if s.virtual_address
        ]
        lines += ["GLOBAL STATS", "Max bcast/mcast queue length,0", "END"]
        return "\n".join(lines) + "\n"
    sep = "\t" if version == 3 else ","
    zone = os.environ.get("TZ")
    lines = [
        sep.join(("TITLE", TITLE)),
        sep.join(("TIME", when, str(written))),
        sep.join(("HEADER", "CLIENT_LIST", *_COLUMNS)),
    ]
    routes = []
    # Only the counters change from poll to poll: the rest of a session's lines is made when it
    # first shows and kept while it keeps showing (for this render's sessions only: memory that
    # grew with every session ever rendered would fault the pages of a poll measured after).
    global _templates
    templates, kept = _templates, {}
    for s in sessions:
        key = (s[:4], s.connected_since, s.client_id, sep, zone)
        found = templates.get(key)
        if found is None:
            found = _template(*key)
        kept[key] = found
        head, tail, route = found
        lines.append(f"{head}{s.bytes_received}{sep}{s.bytes_sent}{tail}")
        if route:
            routes.append(route)
    _templates = kept
    lines.append(
        sep.join(
            (
                "HEADER",
                "ROUTING_TABLE",
                "Virtual Address",
                "Common Name",
                "Real Address",
                "Last Ref",
                "Last Ref (time_t)",
            )
        )
    )
    last_ref = sep.join(("", when, str(written)))
    lines += [route + last_ref for route in routes]
    lines += [sep.join(("GLOBAL_STATS", "Max bcast/mcast queue length", "0")), "END"]
    return "\n".join(lines) + "\n"


_templates: dict[tuple[Any, ...], tuple[str, str, str]] = {}  # the last render's sessions'


def _template(
    names: tuple[str, str, str, str], since: int, client_id: int | None, sep: str, _zone: str | None
) -> tuple[str, str, str]:
    """A session's CLIENT_LIST line before and after its two counters, and its ROUTING_TABLE
    line before Last Ref ("" without a virtual address): ``names`` is (common name, real
    address, virtual address, virtual IPv6). Kept per ``TZ``, as ``_local_in``."""
    common_name, real, virtual, ipv6 = names
    cid = "" if client_id is None else str(client_id)
    head = sep.join(("CLIENT_LIST", common_name, real, virtual, ipv6, ""))
    tail = sep.join(("", _local(since), str(since), "UNDEF", cid, cid, "AES-256-GCM"))
    route = sep.join(("ROUTING_TABLE", virtual, common_name, real)) if virtual else ""
    return head, tail, route


def write_in_place(path: str, text: str) -> None:
    """Rewrite ``path`` in place (same inode, truncate then write), exactly as OpenVPN does."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


@dataclass
class SimClient:
    """One simulated person: how busy, how often connected, and when their day peaks."""

    name: str
    busy: float  # mean bytes per second at the daily peak
    presence: float  # share of the day it is connected
    phase: float  # hour of its daily peak


@dataclass
class Simulation:
    """Clients with a day/night rhythm that connect, move bytes and disconnect.

    Deterministic for a seed; ``step(now)`` advances to wall time ``now`` and returns the sessions
    OpenVPN would list then. One client holds two sessions at once (``duplicate-cn``).
    """

    clients: int = 25
    seed: int = 7
    duplicate: str = "shared-laptop"
    extra_names: tuple[str, ...] = ()  # more CNs, e.g. with spaces or non-ASCII
    first: int = 0  # the number of the first generated name (user-<first>, ...)
    _rng: random.Random = field(init=False)
    _people: list[SimClient] = field(init=False)
    _open: dict[str, list[list[int]]] = field(init=False, default_factory=dict)
    _next_id: int = field(init=False, default=0)
    _last: int | None = field(init=False, default=None)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        generated = self.clients - 1 - len(self.extra_names)
        numbers = range(self.first, self.first + generated)
        names = [f"user-{i:03d}" for i in numbers] + [*self.extra_names, self.duplicate]
        self._people = [
            SimClient(
                name=name,
                busy=self._rng.choice([200.0, 2_000.0, 20_000.0, 150_000.0]),
                presence=1.0 if name in self.extra_names else self._rng.uniform(0.2, 0.95),
                phase=self._rng.uniform(8, 22),
            )
            for name in names
        ]

    def step(self, now: int) -> list[SessionRow]:
        """The sessions a status file shows at ``now``, counters grown since the last step."""
        elapsed = 0 if self._last is None else max(0, now - self._last)
        self._last = now
        hour = (now % 86400) / 3600
        rows: list[SessionRow] = []
        # the loop runs for every client at every step: names looked up once, rows made as the
        # tuples they are, addresses made once per client id (benchmarks step 10,000 clients)
        random, cos, pi, row, new = self._rng.random, math.cos, math.pi, SessionRow, tuple.__new__
        opened, addresses, append = self._open, _addresses, rows.append
        for person in self._people:
            sessions = opened.setdefault(person.name, [])
            daylight = 0.5 + 0.5 * cos((hour - person.phase) / 24 * 2 * pi)
            want = random() < person.presence * (0.4 + 0.6 * daylight)
            if want and not sessions and random() < 0.5:
                sessions.append(self._connect(now))
                if person.name == self.duplicate:
                    sessions.append(self._connect(now))
            elif not want and sessions and random() < 0.05:
                sessions.clear()
            for session in sessions:
                # rng.uniform(a, b) is a + (b - a) * rng.random(): the same numbers
                rate = person.busy * daylight * (0.2 + (1.8 - 0.2) * random())
                session[2] += int(rate * elapsed)
                session[3] += int(rate * elapsed * (0.1 + (0.5 - 0.1) * random()))
                cid, since, rx, tx = session
                real, virtual = addresses(cid)
                # (common name, real address, virtual address, IPv6, rx, tx, since, client id)
                append(new(row, (person.name, real, virtual, "", rx, tx, since, cid)))
        return rows

    def _connect(self, now: int) -> list[int]:
        cid = self._next_id
        self._next_id += 1
        return [cid, now, 0, 0]


@lru_cache(maxsize=1 << 17)
def _addresses(cid: int) -> tuple[str, str]:
    """(real address, virtual address) of client id ``cid``: text, never dialled."""
    return (
        f"127.0.{cid // 250}.{cid % 250 + 1}:{40000 + cid % 20000}",
        f"10.8.{cid // 250}.{cid % 250 + 2}",
    )


def populate(
    engine: Engine,
    status_path: str,
    start: int,
    end: int,
    step: int,
    simulation: Simulation | None = None,
    source: str = "sim",
) -> Simulation:
    """Fill a database through the collector's own code paths: poll a simulated status file every
    ``step`` seconds of simulated time from ``start`` to ``end``."""
    from ovpnmon_demo.polling import StatusPoller

    simulation = simulation or Simulation()
    poller = StatusPoller(engine, status_path, step, start, source)
    for now in range(start, end, step):
        poller.poll(now, render_status(simulation.step(now), now))
    return simulation
