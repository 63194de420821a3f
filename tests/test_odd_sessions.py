"""What OpenVPN should never show but a host may (issue 12, items 4-7): every case is handled by a
rule of docs/accounting.md, logged once, and the rest is stored.

Each test rewrites a status file and polls with the collector the daemon runs (built by the CLI's
own ``open_writer`` and ``build_collector``, one process, so "once" means once), or with
``ovpnmon-collector poll-once``; then checks the database and the API. Sessions say they
connected after the first poll, so they count in full.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import falcon.testing
import pytest
from click.testing import CliRunner
from conftest import stored_totals
from sqlalchemy import func, select

from ovpnmon_api.app import create_app
from ovpnmon_collector.cli import cli
from ovpnmon_collector.cli_common import build_collector, open_writer
from ovpnmon_collector.collector import Collector, PollSummary
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_common import schema
from ovpnmon_common.cliutil import load
from ovpnmon_common.config import Config
from ovpnmon_common.storage import engines
from ovpnmon_demo.simulator import render_status

NOW = int(time.time())
SINCE = NOW + 30 * 86400  # after the first watch, however late the test runs


class Host:
    """A config with one or two status files, and poll-once run against it."""

    def __init__(self, tmp_path: Path, sources: tuple[str, ...] = ("udp",)) -> None:
        self.tmp = tmp_path
        self.db = tmp_path / "x.db"
        self.runner = CliRunner()
        self.collector: Collector | None = None
        self.configure(sources)

    def configure(self, sources: tuple[str, ...]) -> None:
        """Write the config; the next poll starts a new collector process's worth of state."""
        body = f"[database]\npath = {self.db}\n"
        for name in sources:
            body += f"[source:{name}]\nstatus_file = {self.tmp / name}.log\nsettle = 0\n"
        (self.tmp / "c.conf").write_text(body)
        if self.collector is not None:
            self.collector.close()
            self.collector = None

    def write(self, *rows: SessionRow, source: str = "udp", version: int = 3) -> None:
        # written now (not at import: a long suite would make the file look stale)
        written = int(time.time())
        (self.tmp / f"{source}.log").write_text(render_status(rows, written, version))

    def poll(self) -> PollSummary:
        """One poll of the daemon's collector (as ``run`` builds it)."""
        if self.collector is None:
            config = load(str(self.tmp / "c.conf"), None)
            engine, _ = open_writer(config)
            self.collector = build_collector(config, engine)
        summary = self.collector.poll()
        assert summary.stored and not summary.failed, summary
        return summary

    def poll_once(self) -> str:
        """``ovpnmon-collector poll-once``: a process of its own."""
        result = self.runner.invoke(cli, ["poll-once", "--config", str(self.tmp / "c.conf")])
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.output
        return result.output

    def totals(self) -> dict[str, tuple[int, int, bool]]:
        return stored_totals(self.db)

    def history(self) -> dict[str, tuple[int, int]]:
        """Per client, the sum of its raw samples: must always equal its lifetime totals."""
        c, u = schema.clients, schema.usage_history
        engine = engines.reader_engine(str(self.db))
        with engine.connect() as conn:
            rows = conn.execute(
                select(c.c.common_name, func.sum(u.c.bytes_received), func.sum(u.c.bytes_sent))
                .join(u, u.c.client_id == c.c.id)
                .group_by(c.c.common_name)
            ).all()
        engine.dispose()
        return {name: (int(rx), int(tx)) for name, rx, tx in rows}

    def api(self, path: str) -> falcon.testing.Result:
        client = falcon.testing.TestClient(create_app(Config(database=str(self.db))))
        return client.simulate_get(f"/api/v1{path}")


def row(
    cn: str, cid: int | None, rx: int, tx: int, since: int = SINCE, real: str = ""
) -> SessionRow:
    return SessionRow(cn, real or f"198.51.100.{cid or 9}:1194", "10.8.0.6", "", rx, tx, since, cid)


@pytest.fixture
def host(tmp_path: Path):
    host = Host(tmp_path)
    yield host
    host.configure(())


def assert_consistent(host: Host) -> None:
    totals = host.totals()
    assert {name: (rx, tx) for name, (rx, tx, _) in totals.items()} == host.history()


def test_a_closed_session_that_comes_back_is_reopened_and_counted_from_where_it_was(host, caplog):
    host.write(row("alice", 1, 100, 10), row("bob", 2, 50, 5))
    host.poll()
    host.write(row("bob", 2, 60, 6))  # alice missing: closed
    host.poll()
    host.write(row("alice", 1, 150, 15), row("bob", 2, 70, 7))  # back, same id and since
    with caplog.at_level(logging.INFO, "ovpnmon"):
        host.poll()
        host.poll()
    assert host.totals() == {"alice": (150, 15, True), "bob": (70, 7, True)}
    assert_consistent(host)
    reopened = [r.message for r in caplog.records if "is back after it was closed" in r.message]
    assert len(reopened) == 1, reopened
    assert host.api("/stats/alice").json["data"]["status"] == "Active"


def test_a_counter_too_large_to_store_holds_that_session_and_stores_the_rest(host, caplog):
    host.write(row("alice", 1, 10, 1), row("bob", 2, 20, 2))
    host.poll()
    with caplog.at_level(logging.WARNING, "ovpnmon"):
        for _ in range(3):
            host.write(row("alice", 1, 2**63, 1), row("bob", 2, 30, 3))
            host.poll()
    held = [r.message for r in caplog.records if "more than ovpnmon can store" in r.message]
    assert held == [
        "udp: session of 'alice' not counted: Bytes Received 9223372036854775808 is more than "
        "ovpnmon can store (2^63 - 1)"
    ]
    assert host.totals() == {"alice": (10, 1, True), "bob": (30, 3, True)}
    host.write(row("alice", 1, 50, 5), row("bob", 2, 30, 3))  # storable again
    host.poll()
    assert host.totals() == {"alice": (50, 5, True), "bob": (30, 3, True)}
    assert_consistent(host)


def test_a_connected_since_too_large_to_store_is_held_and_the_rest_stored(host):
    host.write(row("alice", 1, 10, 1, since=10**20), row("bob", 2, 20, 2))
    host.poll_once()
    assert host.totals() == {"bob": (20, 2, True)}


def test_poll_once_stores_beside_a_counter_too_large_and_a_changed_name(host):
    host.write(row("alice", 1, 10, 1), row("bob", 2, 20, 2))
    host.poll_once()
    host.write(row("mallory", 1, 12, 1), row("bob", 2, 2**64 - 1, 2))
    host.poll_once()
    assert host.totals() == {"alice": (12, 1, True), "bob": (20, 2, True)}


def test_a_connected_since_in_year_11476_is_stored_and_served(host):
    far = 300_000_000_000
    host.write(row("alice", 1, 10, 1, since=far))
    host.poll()
    assert host.totals() == {"alice": (10, 1, True)}
    for path in ("/stats", "/stats/alice", "/stats/system", "/analytics", "/clients"):
        result = host.api(path)
        assert result.status_code == 200, (path, result.text)
    assert host.api("/stats").json["data"][0]["connected_since"].startswith("11476-")


def test_a_known_session_under_a_never_seen_name_stays_its_first_clients(host, caplog):
    host.write(row("alice", 1, 10, 1))
    host.poll()
    host.write(row("mallory", 1, 20, 2))  # the same Client ID and Connected Since
    with caplog.at_level(logging.WARNING, "ovpnmon"):
        host.poll()
        host.poll()
    assert host.totals() == {"alice": (20, 2, True)}
    assert_consistent(host)
    said = [r.message for r in caplog.records if "now shows common name" in r.message]
    assert said == [
        f"udp: session id:1 (connected {SINCE}) now shows common name 'mallory': still counted "
        "to 'alice', the name it connected with"
    ]


def test_a_known_session_under_another_known_name_keeps_history_and_totals_together(host):
    host.write(row("alice", 1, 10, 1), row("bob", 2, 100, 10))
    host.poll()
    host.write(row("bob", 1, 30, 3), row("bob", 2, 100, 10))
    host.poll()
    assert host.totals() == {"alice": (30, 3, True), "bob": (100, 10, True)}
    assert_consistent(host)


def test_a_status_version_1_session_that_floats_is_one_session(host):
    host.write(row("alice", None, 1000, 10, real="198.51.100.7:5000"), version=1)
    host.poll()
    # the same session (common name and Connected Since), re-NATed to another address and port
    host.write(row("alice", None, 1_001_000, 20, real="203.0.113.9:6000"), version=1)
    host.poll()
    host.write(row("alice", None, 1_002_000, 30, real="203.0.113.9:6000"), version=1)
    host.poll()
    assert host.totals() == {"alice": (1_002_000, 30, True)}
    assert_consistent(host)
    sessions = host.api("/stats/alice").json["data"]["sessions"]
    assert [s["real_address"] for s in sessions] == ["203.0.113.9:6000"]
    engine = engines.reader_engine(str(host.db))
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.sessions)).scalar() == 1
    engine.dispose()


def test_a_baseline_session_whose_counters_go_down_is_never_negative(host):
    host.write(row("alice", 1, 1_000_000, 500_000, since=NOW - 3600))  # before the first watch
    host.poll()
    host.write(row("alice", 1, 100, 50, since=NOW - 3600))  # restarted without a reconnect
    host.poll()
    totals = host.api("/stats/alice").json["data"]["totals"]
    assert (totals["received_bytes"], totals["sent_bytes"]) == (100, 50)
    assert_consistent(host)


def test_a_counter_down_in_one_direction_leaves_the_other_counted_once(host):
    host.write(row("alice", 1, 1000, 500))
    host.poll()
    host.write(row("alice", 1, 10, 600))  # received restarted, sent carries on
    host.poll()
    host.write(row("alice", 1, 20, 700))
    host.poll()
    assert host.totals() == {"alice": (1020, 700, True)}
    assert_consistent(host)
    # and after a restart of the collector, from what the database holds
    host.write(row("alice", 1, 30, 800))
    host.poll()
    assert host.totals() == {"alice": (1030, 800, True)}


def test_a_source_removed_from_the_config_has_its_sessions_closed(tmp_path, caplog):
    host = Host(tmp_path, ("udp", "tcp"))
    host.write(row("alice", 1, 10, 1))
    host.write(row("bob", 1, 20, 2), source="tcp")
    host.poll()
    host.configure(("udp",))  # and the collector restarted, as the config is read at start
    host.write(row("alice", 1, 15, 1))
    time.sleep(1.05 - time.time() % 1)  # a poll of its own second: whole-server rows not merged
    with caplog.at_level(logging.WARNING, "ovpnmon"):
        host.poll()
    assert host.totals() == {"alice": (15, 1, True), "bob": (20, 2, False)}
    assert any(
        "source tcp is no longer configured: closed its 1 open sessions" in r.message
        for r in caplog.records
    )
    assert host.api("/stats/system").json["data"]["active_clients"] == 1
    assert "tcp" not in host.api("/health").json["sources"]
    s, g = schema.sessions, schema.global_history
    engine = engines.reader_engine(str(host.db))
    with engine.connect() as conn:
        closed = dict(conn.execute(select(s.c.source, s.c.disconnected_at)).all())
        polls = conn.execute(select(g.c.ts, g.c.active_count).order_by(g.c.ts)).all()
    engine.dispose()
    # closed at the last poll that saw it (the first one), not when the collector noticed
    assert closed == {"udp": None, "tcp": polls[0].ts}
    assert polls[-1].active_count == 1


def test_the_latest_closed_connected_since_is_kept_and_worked_out_for_older_databases(host):
    """What lets a poll skip looking up 10,000 new sessions after an OpenVPN restart."""
    host.write(row("alice", 1, 100, 10), row("bob", 2, 50, 5, since=SINCE + 5))
    host.poll()
    host.write(row("alice", 1, 100, 10))  # bob closes
    host.poll()
    engine = engines.writer_engine(str(host.db))

    def stored():
        with engine.connect() as conn:
            query = select(schema.sources.c.name, schema.sources.c.closed_since)
            return dict(conn.execute(query).all())

    assert stored() == {"udp": SINCE + 5}
    with engine.begin() as conn:  # as a database written before the column was filled
        conn.execute(schema.sources.update().values(closed_since=None))
    host.configure(("udp",))  # a new collector: works it out from the sessions table
    host.write(row("alice", 1, 100, 10), row("bob", 2, 80, 8, since=SINCE + 5))  # bob is back
    host.poll()
    assert stored() == {"udp": SINCE + 5}
    engine.dispose()
    assert host.totals() == {"alice": (100, 10, True), "bob": (80, 8, True)}
