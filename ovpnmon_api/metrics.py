"""``GET /metrics``: Prometheus text (or OpenMetrics, by ``Accept``) read from the database at
scrape time, read-only. The database is read once per state of it (``metrics_state``, which also
writes the per-client series); the other families, a few dozen samples, are built and rendered by
``prometheus_client`` at every scrape, with the time-dependent ones (a certificate expired, the
file's size) fresh.

Per client, the received and sent byte counters are the lifetime totals the JSON API reports
(``ovpnmon_common.totals``): they never go down across reconnects, duplicate-cn sessions,
OpenVPN restarts or collector restarts, so ``rate()`` and ``increase()`` over them are exact up
to the scrape times. docs/prometheus.md lists every metric.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import falcon
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from ovpnmon_api.database import FollowedDatabase
from ovpnmon_api.metrics_state import MetricsState, Snapshot
from ovpnmon_common import meta


def _gauge(name: str, documentation: str, label: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=[label])


class Scrape(Collector):
    """One scrape's families: ovpnmon's but the per-client ones (``metrics_state`` writes
    those), from a snapshot, and the API process's own (CPU, memory, file descriptors, GC)."""

    def __init__(self, database: FollowedDatabase, snapshot: Snapshot) -> None:
        self.database = database
        self.snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        status = self.snapshot.status
        yield from self._sources(status, self.snapshot.source_counts)
        yield from self._collector(status)
        yield from self._certificates(self.snapshot.certificates)
        yield from self._database(status, self.snapshot.size)
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            yield from standard.collect()

    def _sources(
        self, status: meta.CollectorStatus, counts: dict[str, tuple[int, int]]
    ) -> Iterator[Metric]:
        up = _gauge("ovpnmon_source_up", "1 if the source read fine at the last poll.", "source")
        source_clients = _gauge(
            "ovpnmon_source_clients", "Clients with an open session on the source.", "source"
        )
        source_sessions = _gauge(
            "ovpnmon_source_sessions", "Open sessions on the source.", "source"
        )
        for name in sorted(set(status.sources) | set(counts)):
            health = status.sources.get(name, {})
            up.add_metric([name], 1 if health.get("state") == "ok" else 0)
            source_clients.add_metric([name], counts.get(name, (0, 0))[0])
            source_sessions.add_metric([name], counts.get(name, (0, 0))[1])
        yield from (up, source_clients, source_sessions)

    def _collector(self, status: meta.CollectorStatus) -> Iterator[Metric]:
        if status.heartbeat is not None:
            yield GaugeMetricFamily(
                "ovpnmon_collector_last_poll_timestamp_seconds",
                "When the collector last stored a poll (Unix time).",
                value=status.heartbeat,
            )
        if status.poll_seconds is not None:
            yield GaugeMetricFamily(
                "ovpnmon_collector_poll_duration_seconds",
                "How long the collector's last stored poll took, reading to commit.",
                value=status.poll_seconds,
            )
        if status.interval is not None:
            yield GaugeMetricFamily(
                "ovpnmon_collector_interval_seconds",
                "The collector's configured poll interval.",
                value=status.interval,
            )

    def _certificates(self, rows: list[dict]) -> Iterator[Metric]:
        labels = ["file", "common_name", "serial"]
        expiry = GaugeMetricFamily(
            "ovpnmon_certificate_expiry_timestamp_seconds",
            "When the certificate expires (notAfter, Unix time).",
            labels=labels,
        )
        expired = GaugeMetricFamily(
            "ovpnmon_certificate_expired",
            "1 if the certificate has expired (notAfter is past).",
            labels=labels,
        )
        revoked = GaugeMetricFamily(
            "ovpnmon_certificate_revoked", "1 if the CRL revokes the certificate.", labels=labels
        )
        now = time.time()
        for row in rows:
            label = [row["file"], row["common_name"] or "", row["serial"]]
            expiry.add_metric(label, row["not_after"])
            expired.add_metric(label, 1 if row["not_after"] <= now else 0)
            revoked.add_metric(label, 1 if row["revoked"] else 0)
        yield from (expiry, expired, revoked)

    def _database(self, status: meta.CollectorStatus, size: int) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "ovpnmon_database_size_bytes",
            "The database: the SQLite file with its WAL files, or the PostgreSQL database.",
            value=size,
        )
        if status.schema_version is not None:
            yield GaugeMetricFamily(
                "ovpnmon_database_schema_version",
                "The database's schema version.",
                value=status.schema_version,
            )


class Metrics:
    """``GET /metrics`` (the conventional path, beside ``/api/v1``); bearer tokens as the API."""

    def __init__(self, database: FollowedDatabase, per_client: bool = True) -> None:
        self.database = database
        self.state = MetricsState(database, per_client)

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        encoder, content_type = choose_encoder(req.get_header("Accept") or "")
        openmetrics = content_type.startswith("application/openmetrics-text")
        snapshot = self.state.scrape(openmetrics)
        rest = encoder(Scrape(self.database, snapshot))
        resp.data = snapshot.clients[openmetrics] + rest
        resp.content_type = content_type

    on_head = on_get
