"""``GET /metrics``: the exposition parsed back, counters that never reset, hostile labels, and
``promtool check metrics`` on a real scrape (issue 16, first part)."""

from __future__ import annotations

import shutil
import subprocess

import falcon.testing
import pytest
from conftest import FakeClock, StatusPoller, insert_client, require_e2e, row
from prometheus_client.parser import text_string_to_metric_families

from ovpnmon_api.app import create_app
from ovpnmon_collector.collector import Collector
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.store import Store
from ovpnmon_common import schema
from ovpnmon_common.config import ApiConfig, Config
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import render_status

T0 = 1_795_717_500
HOSTILE = 'quote " back \\ slash, ünïcødé ☃'
NEWLINE = "line\nbreak"  # no status file can carry it; stored directly to test the escaping


@pytest.fixture
def polled(tmp_path, engine):
    """A database with three polls: alice reconnects (OpenVPN's counters restart at zero), bob
    holds two duplicate-cn sessions, a hostile name, and a name with a newline."""
    poll = (poller := StatusPoller(engine, tmp_path, T0)).poll
    poll(row("alice", 0, T0 - 5, 0, 0), row("bob", 1, T0 - 5, 0, 0), row("bob", 2, T0 - 5, 0, 0))
    poll(
        row("alice", 0, T0 - 5, 5000, 500),
        row("bob", 1, T0 - 5, 100, 10),
        row("bob", 2, T0 - 5, 200, 20),
        row(HOSTILE, 3, T0 + 5, 0, 0),
    )
    # alice reconnected: a new session whose counters start again
    poll(
        row("alice", 4, T0 + 15, 300, 30),
        row("bob", 1, T0 - 5, 150, 15),
        row("bob", 2, T0 - 5, 260, 26),
        row(HOSTILE, 3, T0 + 5, 70, 7),
    )
    poller.close()
    insert_client(engine, NEWLINE, id=99, seen=T0, closed_received=12, closed_sent=3)
    return engine


def scrape(config: Config, **headers) -> falcon.testing.Result:
    return falcon.testing.TestClient(create_app(config)).simulate_get("/metrics", headers=headers)


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_client_counters_are_the_lifetime_totals_and_parse_back(polled, config):
    result = scrape(config)
    assert result.status_code == 200
    assert result.headers["content-type"].startswith("text/plain; version=0.0.4")
    found = families(result.text)
    with polled.connect() as conn:
        totals = lifetime_totals(conn)
    received = found["ovpnmon_client_received_bytes"]
    assert received.type == "counter" and received.documentation
    got = {s.labels["client"]: s.value for s in received.samples if s.name.endswith("_total")}
    assert got == {name: rx for name, (rx, _, _) in totals.items()}
    assert got["alice"] == 5300  # 5000 before the reconnect + 300 after: never reset
    assert got["bob"] == 410  # both duplicate-cn sessions
    assert got[HOSTILE] == 70 and got[NEWLINE] == 12  # labels escaped and read back whole
    sent = {s.labels["client"]: s.value for s in found["ovpnmon_client_sent_bytes"].samples}
    assert sent["alice"] == 530
    connected = {s.labels["client"]: s.value for s in found["ovpnmon_client_connected"].samples}
    assert connected == {"alice": 1, "bob": 1, HOSTILE: 1, NEWLINE: 0}
    sessions = {s.labels["client"]: s.value for s in found["ovpnmon_client_sessions"].samples}
    assert sessions["bob"] == 2
    source = {s.name: s.value for f in found.values() for s in f.samples if "source" in s.labels}
    assert source == {
        "ovpnmon_source_up": 1,
        "ovpnmon_source_clients": 3,
        "ovpnmon_source_sessions": 4,
    }
    last_poll = found["ovpnmon_collector_last_poll_timestamp_seconds"].samples[0].value
    assert last_poll == T0 + 20
    assert found["ovpnmon_collector_interval_seconds"].samples[0].value == 10
    assert found["ovpnmon_collector_poll_duration_seconds"].samples[0].value >= 0
    assert found["ovpnmon_database_schema_version"].samples[0].value == schema.SCHEMA_VERSION
    assert found["ovpnmon_database_size_bytes"].samples[0].value > 0
    assert "process_resident_memory_bytes" in found  # the API process's own
    for family in found.values():
        assert family.documentation, family.name


def test_openmetrics_by_content_negotiation(polled, config):
    result = scrape(config, Accept="application/openmetrics-text; version=1.0.0")
    assert result.headers["content-type"].startswith("application/openmetrics-text")
    assert result.text.endswith("# EOF\n")
    assert 'ovpnmon_client_received_bytes_total{client="alice"} 5300' in result.text


def test_tokens_switches_and_per_client(polled, db_path):
    tokens = Config(database=db_path, api=ApiConfig(tokens=("t",)))
    assert scrape(tokens).status_code == 401
    assert scrape(tokens, Authorization="Bearer t").status_code == 200
    off = Config(database=db_path, api=ApiConfig(metrics=False))
    assert scrape(off).status_code == 404
    lean = scrape(Config(database=db_path, api=ApiConfig(metrics_per_client=False)))
    assert "ovpnmon_client_" not in lean.text and "ovpnmon_source_up" in lean.text


def test_a_missing_database_is_a_503_with_the_reason(tmp_path):
    result = scrape(Config(database=str(tmp_path / "none.db")))
    assert result.status_code == 503
    assert "does not exist (yet)" in result.json["error"]


def test_promtool_finds_nothing_to_fix_in_a_real_scrape(polled, config, tmp_path):
    promtool = shutil.which("promtool")
    require_e2e(None if promtool else "promtool is not installed (Debian package prometheus)")
    text = scrape(config).text
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert checked.returncode == 0 and checked.stdout + checked.stderr == "", checked.stderr


class Ticking(FakeClock):
    """Each look at the monotonic clock is a quarter of a second later: a poll takes time."""

    def monotonic(self) -> float:
        self.mono += 0.25
        return self.mono


def test_the_poll_duration_is_the_last_stored_polls_and_reaches_metrics(tmp_path, engine, config):
    status = tmp_path / "status.log"
    clock = Ticking(T0)
    collector = Collector(
        Store(engine), [StatusFileSource("udp", str(status), settle=0)], clock=clock
    )
    status.write_text(render_status([row("alice", 0, T0 - 5, 10, 1)], T0))
    assert collector.poll().stored
    found = families(scrape(config).text)
    assert "ovpnmon_collector_poll_duration_seconds" not in found  # none finished before it
    clock.advance(10)
    status.write_text(render_status([row("alice", 0, T0 - 5, 20, 2)], int(clock.wall)))
    assert collector.poll().stored
    duration = families(scrape(config).text)["ovpnmon_collector_poll_duration_seconds"]
    seconds = duration.samples[0].value
    assert seconds > 0 and seconds % 0.25 == 0  # the first poll's, in the clock's steps
