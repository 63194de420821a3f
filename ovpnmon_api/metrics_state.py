"""What ``/metrics`` shows from the database, read once per database state and kept warm.

The collector commits once a poll; between two polls every scrape would read the same rows. So
they are read once per state of the database (its change counter, one read transaction for all
of them) and kept until the next commit. Once ``/metrics`` has been scraped, a daemon thread
reads the new state right after each commit, so the scrape that follows a poll does not wait
for it either; the thread stops when nobody has scraped for ``IDLE_SECONDS``, and with the app
that owns it. A scrape always gets the state the database is in when it arrives (or a newer
one): when the state moved and the warmer is not done, the scrape waits for it rather than
read twice.

The per-client series are most of a scrape: at 10,000 clients, 50,000 samples and 3 MB of text.
Building them as ``prometheus_client`` metric families and rendering those took 0.35 s, a hundred
times the cost of serving the bytes, so this module writes those lines itself, byte for byte what
``prometheus_client`` writes for the same families (tests/test_metrics_state.py compares the two
in both formats, hostile names included). The few dozen other samples are ``prometheus_client``
families built from the snapshot at every scrape (``ovpnmon_api.metrics``).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from prometheus_client.utils import floatToGoString
from sqlalchemy.exc import DBAPIError

from ovpnmon_api.background import ensure_running
from ovpnmon_api.database import FollowedDatabase
from ovpnmon_api.read import certificates, clients
from ovpnmon_common import meta, totals
from ovpnmon_common.storage import DatabaseError, engines

log = logging.getLogger("ovpnmon.api")

# (name, type, help); counters are ``<name>_total`` in samples (and in the text format's
# HELP and TYPE lines too: prometheus_client's rule, kept here).
FAMILIES = (
    (
        "ovpnmon_client_received_bytes",
        "counter",
        "Bytes the server received from the client, all sessions, ever (never resets).",
    ),
    (
        "ovpnmon_client_sent_bytes",
        "counter",
        "Bytes the server sent to the client, all sessions, ever (never resets).",
    ),
    ("ovpnmon_client_connected", "gauge", "1 if the client has an open session now."),
    ("ovpnmon_client_sessions", "gauge", "Open sessions of the client now."),
    (
        "ovpnmon_client_last_seen_timestamp_seconds",
        "gauge",
        "When the collector last saw the client connected (Unix time).",
    ),
)

_EXACT = 1 << 53  # every integer below is a float exactly


def go_float(value: int) -> str:
    """``prometheus_client.utils.floatToGoString(value)`` for an integer, three times faster
    (50,000 a scrape): Go's notation, ``1e+06`` from a million on."""
    if 0 <= value < 1_000_000:
        return f"{value}.0"
    if 0 < value < _EXACT:
        digits = str(value)
        mantissa = f"{digits[0]}.{digits[1:]}".rstrip("0.")
        return f"{mantissa}e+{len(digits) - 1:02d}"
    return floatToGoString(value)  # type: ignore[no-any-return]


def escape_label(value: str) -> str:
    """A label value as the exposition formats quote it."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")
    return value


def sample_lines(clients: list[totals.Lifetime]) -> list[list[str]]:
    """Each family's sample lines (in ``FAMILIES`` order), one per client, in ``clients``'
    order (their last seen already their hosts' last poll while connected)."""
    received: list[str] = []
    sent: list[str] = []
    connected: list[str] = []
    sessions: list[str] = []
    seen: list[str] = []
    for client in clients:
        label = f'{{client="{escape_label(client.common_name)}"}} '
        received.append(f"ovpnmon_client_received_bytes_total{label}{go_float(client.received)}\n")
        sent.append(f"ovpnmon_client_sent_bytes_total{label}{go_float(client.sent)}\n")
        connected.append(f"ovpnmon_client_connected{label}{'1.0' if client.active else '0.0'}\n")
        sessions.append(f"ovpnmon_client_sessions{label}{go_float(client.sessions)}\n")
        seen.append(
            f"ovpnmon_client_last_seen_timestamp_seconds{label}{go_float(client.last_seen)}\n"
        )
    return [received, sent, connected, sessions, seen]


def render(lines: list[list[str]], openmetrics: bool) -> bytes:
    """The families with their HELP and TYPE lines, in one of the two formats."""
    out = []
    for (name, kind, documentation), samples in zip(FAMILIES, lines, strict=True):
        shown = name if openmetrics or kind != "counter" else f"{name}_total"
        out.append(f"# HELP {shown} {documentation}\n# TYPE {shown} {kind}\n")
        out.extend(samples)
    return "".join(out).encode()


@dataclass(frozen=True)
class Snapshot:
    """What ``/metrics`` shows from one database state."""

    status: meta.CollectorStatus
    source_counts: dict[str, tuple[int, int]]  # per source: (clients, sessions) open now
    certificates: list[dict]
    lines: list[list[str]]  # the per-client families' samples (``sample_lines``); [] if off
    clients: dict[bool, bytes]  # those families rendered, by format (True: OpenMetrics), as asked
    size: int  # bytes the database takes (engines.database_size)


class MetricsState:
    """The database's metrics for its current state, read once per state (one transaction)."""

    IDLE_SECONDS = 600.0  # the warmer stops after this long without a scrape
    WATCH_SECONDS = 0.25  # how often the warmer looks at the change counter

    def __init__(self, database: FollowedDatabase, per_client: bool = True) -> None:
        self.database = database
        self.per_client = per_client
        self._lock = threading.Lock()  # one read at a time; a scrape waits for the warmer's
        self._version: Hashable = None
        self._snapshot: Snapshot | None = None
        self._scraped = 0.0  # monotonic time of the last scrape
        self._wanted: set[bool] = set()  # the formats scraped (OpenMetrics or not)
        self._warmer: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.reads = 0  # how many times the database was read (for the tests)

    def scrape(self, openmetrics: bool) -> Snapshot:
        """The snapshot of the state the database is in now, its per-client families rendered
        in the scrape's format (raises ``DatabaseError``)."""
        self._scraped = time.monotonic()
        self._wanted.add(openmetrics)
        self._start_warmer()
        return self._current((openmetrics,))

    def _current(self, formats: Iterable[bool]) -> Snapshot:
        version = self.database.check()
        with self._lock:
            if version != self._version or self._snapshot is None:
                self._snapshot = self._read()
                self._version = version
                self.reads += 1
            snapshot = self._snapshot
            for openmetrics in formats:
                if openmetrics not in snapshot.clients:
                    found = render(snapshot.lines, openmetrics) if self.per_client else b""
                    snapshot.clients[openmetrics] = found
            return snapshot

    def _read(self) -> Snapshot:
        with self.database.snapshot() as (conn, status):
            counts = clients.source_counts(conn, status)
            certs = certificates.certificates(conn)
            every = totals.lifetimes(conn) if self.per_client else []
            size = engines.database_size(conn, self.database.path)
        lines = sample_lines(every) if self.per_client else []
        return Snapshot(status, counts, certs, lines, {}, size)

    def _start_warmer(self) -> None:
        self._warmer = ensure_running(self, self._warmer, self._start_lock, "metrics-warmer")

    def warm_once(self) -> bool:
        """Bring the formats scraped so far up to the database's state (the warmer's step);
        False once nobody has scraped for ``IDLE_SECONDS``."""
        if time.monotonic() - self._scraped > self.IDLE_SECONDS:
            return False
        try:
            self._current(tuple(self._wanted))
        except (DatabaseError, DBAPIError, OSError, sqlite3.Error) as exc:
            log.debug("metrics warmer: %s", exc)  # the next scrape says it, as a 503
        return True
