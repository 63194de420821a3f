"""What ``/metrics`` reads from the database: once per database state, kept warm after each
commit, the per-client series written byte for byte as ``prometheus_client`` writes them."""

from __future__ import annotations

import gc
import os
import time

import falcon
import falcon.testing
import pytest
from conftest import insert_client
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.utils import floatToGoString

from ovpnmon_api import errors
from ovpnmon_api.database import FollowedDatabase
from ovpnmon_api.metrics import Metrics
from ovpnmon_api.metrics_state import FAMILIES, MetricsState, go_float, render, sample_lines
from ovpnmon_common import totals

T0 = 1_795_717_500
NAMES = ["alice", 'quote " back \\ slash, ünïcødé ☃', "line\nbreak", "=cmd", "\\n literal"]


@given(st.integers(min_value=-(2**70), max_value=2**70))
def test_go_float_is_prometheus_clients_notation(value):
    assert go_float(value) == floatToGoString(value)


def test_go_float_at_the_edges():
    for value in (0, 1, 999_999, 1_000_000, 1_000_001, 10**15, 2**53 - 1, 2**53, 2**53 + 1, 10**16):
        assert go_float(value) == floatToGoString(value), value


def reference(clients, openmetrics):
    """The same families built and rendered by prometheus_client."""
    built = []
    for name, kind, documentation in FAMILIES:
        family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        built.append(family(name, documentation, labels=["client"]))
    for client in clients:
        values = (
            client.received,
            client.sent,
            1 if client.active else 0,
            client.sessions,
            client.last_seen,
        )
        for family, value in zip(built, values, strict=True):
            family.add_metric([client.common_name], value)

    class Fixed:
        def collect(self):
            return built

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Fixed())
    if openmetrics:
        return generate_openmetrics(registry).removesuffix(b"# EOF\n")
    return generate_latest(registry)


lifetimes = st.lists(
    st.builds(
        totals.Lifetime,
        st.sampled_from(NAMES) | st.text(min_size=1, max_size=12),
        st.booleans(),
        st.integers(0, 2**40),
        st.integers(0, 2**63),
        st.integers(0, 2**63),
        st.integers(0, 3),
    ),
    max_size=8,
    unique_by=lambda client: client.common_name,
)


@given(lifetimes)
def test_the_lines_are_prometheus_clients_in_both_formats(clients):
    lines = sample_lines(clients)
    for openmetrics in (False, True):
        assert render(lines, openmetrics) == reference(clients, openmetrics)


def wait_for(condition, seconds=30.0):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_rendered_once_per_database_state_and_new_after_a_commit(engine, db_path):
    insert_client(engine, "alice", id=1, closed_received=10)
    state = MetricsState(FollowedDatabase(db_path))
    state.IDLE_SECONDS = 0  # no warmer: this test counts the scrapes' own reads
    first = state.scrape(False).clients[False]
    assert state.scrape(False).clients[False] is first and state.reads == 1
    assert b'ovpnmon_client_received_bytes_total{client="alice"} 10.0\n' in first
    insert_client(engine, "bob", id=2, closed_received=20)
    second = state.scrape(False).clients[False]
    assert state.reads == 2
    assert b'{client="bob"} 20.0' in second and b'{client="alice"} 10.0' in second


def test_the_warmer_renders_after_each_commit_so_the_scrape_does_not(engine, db_path):
    insert_client(engine, "alice", id=1, closed_received=10)
    state = MetricsState(FollowedDatabase(db_path))
    state.WATCH_SECONDS = 0.01
    state.scrape(True)
    assert state.reads == 1
    insert_client(engine, "bob", id=2, closed_received=20)  # a commit, as after a poll
    wait_for(lambda: state.reads == 2)
    assert b'{client="bob"} 20.0' in state.scrape(True).clients[True]
    assert state.reads == 2  # the scrape found it read


def test_the_warmer_stops_when_nobody_scrapes_and_with_its_app(engine, db_path):
    insert_client(engine, "alice", id=1, closed_received=10)
    state = MetricsState(FollowedDatabase(db_path))
    state.WATCH_SECONDS = 0.01
    state.scrape(False)
    warmer = state._warmer
    assert warmer is not None and warmer.is_alive()
    state.IDLE_SECONDS = 0
    warmer.join(10)
    assert not warmer.is_alive()
    state.IDLE_SECONDS = 600
    state.scrape(False)  # a scrape starts it again
    warmer = state._warmer
    assert warmer is not None and warmer.is_alive()
    del state
    gc.collect()
    warmer.join(10)
    assert not warmer.is_alive()


@pytest.mark.sqlite_only  # the file; a PostgreSQL that goes away: test_postgres.py
def test_a_database_that_vanished_is_a_503_even_with_lines_in_hand(engine, db_path, tmp_path):
    insert_client(engine, "alice", id=1, closed_received=10)
    app = falcon.App()
    errors.install(app)
    app.add_route("/metrics", Metrics(FollowedDatabase(db_path)))
    client = falcon.testing.TestClient(app)
    assert client.simulate_get("/metrics").status_code == 200
    engine.dispose()
    moved = tmp_path / "moved.db"
    os.rename(db_path, moved)
    result = client.simulate_get("/metrics")
    assert result.status_code == 503 and "does not exist (yet)" in result.json["error"]
    os.rename(moved, db_path)
    assert b"alice" in client.simulate_get("/metrics").content
