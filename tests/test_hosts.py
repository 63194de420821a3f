"""Several hosts in one database: a common name is one client across hosts, ``?host=`` narrows
to one host, ``/hosts`` and ``/health`` speak of each host's collector. Two real collectors
(as two VPN hosts would run them) write one database, on both engines."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

import falcon.testing
import pytest
from conftest import StatusPoller, row
from schema_v3 import as_schema_3
from sqlalchemy import func, inspect, select
from sqlalchemy.schema import CreateTable

from ovpnmon_api.app import create_app
from ovpnmon_collector import rollup
from ovpnmon_collector.store import Store
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.buckets import align
from ovpnmon_common.config import ApiConfig, Config, RetentionConfig
from ovpnmon_common.storage.engines import writer_engine
from ovpnmon_common.storage.migrations import init_db
from ovpnmon_common.tiers import ROLLUPS, source_of, sql_align
from ovpnmon_common.totals import lifetime_totals

T0 = 1_795_000_000
SINCE = T0 - 50
DAY = time.strftime("%Y-%m-%d", time.gmtime(T0))  # the day of every poll here


@pytest.fixture
def fleet(engine, db_path, tmp_path):
    """vpn1 sees alice and carol, vpn2 sees alice and bob; four polls each, 10 s apart (vpn2 a
    second after vpn1). Returns the API client and the clock the API reads."""
    one = StatusPoller(engine, tmp_path, T0, host="vpn1")
    two = StatusPoller(engine, tmp_path, T0 + 1, host="vpn2")
    for n in range(1, 5):
        one.poll(row("alice", 1, SINCE, 100 * n, 10 * n), row("carol", 2, SINCE, 7 * n, 7 * n))
        two.poll(row("alice", 1, SINCE, 1000 * n, 1 * n), row("bob", 5, SINCE, 50 * n, 5 * n))
    now = [T0 + 45]
    config = Config(
        database=db_path,
        interval=10,
        api=ApiConfig(cache_mb=0),
        retention=RetentionConfig(raw_days=40),
    )
    client = falcon.testing.TestClient(create_app(config, clock=lambda: now[0]))
    yield client, now, one, two
    one.close()
    two.close()


def get(client, path, **params):
    result = client.simulate_get(f"/api/v1{path}", params=params)
    assert result.status_code == 200, result.text
    return result.json


# The first poll of each host counts nothing (counters already there when first watched), so
# each host counted three polls' growth: alice 300/30 on vpn1 and 3000/3 on vpn2, carol 21/21,
# bob 150/15.
ALICE_1, ALICE_2, CAROL, BOB = (300, 30), (3000, 3), (21, 21), (150, 15)


def sessions_of(body):
    return {x["common_name"]: x["sessions"] for x in body["data"]}


def bytes_of(client, name, **params):
    totals = get(client, f"/stats/{name}", **params)["data"]["totals"]
    return totals["received_bytes"], totals["sent_bytes"]


def test_a_common_name_on_two_hosts_is_one_client(fleet):
    client, *_ = fleet
    every = get(client, "/stats")
    assert every["count"] == 3
    assert sessions_of(every) == {"alice": 2, "bob": 1, "carol": 1}
    assert bytes_of(client, "bob") == BOB and bytes_of(client, "carol") == CAROL
    alice = get(client, "/stats/alice", range="1h")["data"]
    assert alice["totals"]["received_bytes"] == ALICE_1[0] + ALICE_2[0]
    assert alice["totals"]["sent_bytes"] == ALICE_1[1] + ALICE_2[1]
    assert len(alice["sessions"]) == 2 and alice["status"] == "Active"
    history = alice["history"]
    assert sum(p["bytes_received"] for p in history) == ALICE_1[0] + ALICE_2[0]
    raw = get(client, "/stats/alice", range="1h", resolution="raw")["data"]["history"]
    assert sum(p["bytes_received"] for p in raw) == ALICE_1[0] + ALICE_2[0]
    system = get(client, "/stats/system")["data"]
    assert (system["total_clients"], system["active_clients"]) == (3, 3)
    assert get(client, "/clients")["data"] == [
        {"common_name": name, "status": "Active"} for name in ("alice", "bob", "carol")
    ]
    analytics = get(client, "/analytics")["data"]
    assert analytics["traffic_distribution"]["rx"] == 3300 + 150 + 21
    assert analytics["top_clients_24h"][0] == {
        "common_name": "alice",
        "total_rx": 3300,
        "total_tx": 33,
        "total": 3333,
    }
    usage = {x["common_name"]: x["bytes_total"] for x in get(client, "/usage", period=DAY)["data"]}
    assert usage == {"alice": 3333, "bob": 165, "carol": 42}


def test_host_narrows_every_answer_to_that_host(fleet):
    client, *_ = fleet
    assert sessions_of(get(client, "/stats", host="vpn1")) == {"alice": 1, "carol": 1}
    assert bytes_of(client, "alice", host="vpn1") == ALICE_1
    alice = get(client, "/stats/alice", host="vpn2")["data"]
    assert (alice["totals"]["received_bytes"], alice["totals"]["sent_bytes"]) == ALICE_2
    assert [s["source"] for s in alice["sessions"]] == ["udp"]
    system = get(client, "/stats/system", host="vpn2")["data"]
    assert (system["total_clients"], system["active_clients"]) == (2, 2)
    assert [c["common_name"] for c in get(client, "/clients", host="vpn2")["data"]] == [
        "alice",
        "bob",
    ]
    analytics = get(client, "/analytics", host="vpn1")["data"]
    assert analytics["traffic_distribution"] == {"rx": 321, "tx": 51}
    assert [c["common_name"] for c in analytics["top_clients_24h"]] == ["alice", "carol"]
    usage = get(client, "/usage", period=DAY, host="vpn2", common_name="alice")["data"]
    assert [(x["bytes_received"], x["bytes_sent"]) for x in usage] == [ALICE_2]
    every = get(client, "/usage", period=DAY, host="vpn2")["data"]
    assert [(x["common_name"], x["bytes_received"], x["bytes_sent"]) for x in every] == [
        ("alice", *ALICE_2),
        ("bob", *BOB),
    ]
    sessions = get(client, "/sessions", host="vpn2")["data"]
    assert sorted((s["common_name"], s["host"]) for s in sessions) == [
        ("alice", "vpn2"),
        ("bob", "vpn2"),
    ]
    missing = client.simulate_get("/api/v1/stats/bob", params={"host": "vpn1"})
    assert missing.status_code == 404
    assert missing.json["error"] == (
        "no client named 'bob' on host 'vpn1'; GET /api/v1/clients lists them"
    )
    unknown = client.simulate_get("/api/v1/stats", params={"host": "vpn9"})
    assert unknown.status_code == 404
    assert (
        unknown.json["error"] == "no host named 'vpn9'; known hosts: vpn1, vpn2 (GET /api/v1/hosts)"
    )


def test_hosts_and_health_speak_of_each_hosts_collector(fleet):
    client, now, one, _ = fleet
    hosts = get(client, "/hosts")["data"]
    assert [(h["host"], h["status"], h["total_clients"], h["active_clients"]) for h in hosts] == [
        ("vpn1", "healthy", 2, 2),
        ("vpn2", "healthy", 2, 2),
    ]
    assert hosts[1]["last_poll"] is not None and hosts[1]["interval_seconds"] == 10
    health = get(client, "/health")
    assert health["status"] == "healthy" and health["hosts"] == ["vpn1", "vpn2"]
    assert sorted(health["sources"]) == ["vpn1/udp", "vpn2/udp"]
    # vpn1 goes on polling; vpn2's collector stopped
    for n in range(5, 10):
        one.poll(row("alice", 1, SINCE, 100 * n, 10 * n), row("carol", 2, SINCE, 7 * n, 7 * n))
    now[0] = T0 + 95
    health = get(client, "/health")
    assert health["status"] == "degraded" and health["stale_hosts"] == ["vpn2"]
    assert health["reason"].startswith("host vpn2: the collector last stored a poll 64 s ago")
    hosts = {h["host"]: h for h in get(client, "/hosts")["data"]}
    assert hosts["vpn1"]["status"] == "healthy" and hosts["vpn2"]["status"] == "degraded"


def test_a_schema_3_database_becomes_host_1_and_carries_on_exactly(engine, db_path, tmp_path):
    """The upgrade to schema 4 files the one collector's history under the upgrading
    collector's host name: every answer the same, what meta said of it moved, and the next
    poll counts only new bytes (the source is not taken as newly watched)."""
    poller = StatusPoller(engine, tmp_path, T0, host=None)
    for n in range(1, 4):
        poller.poll(row("alice", 1, SINCE, 100 * n, 10 * n), row("bob", 2, SINCE, 5 * n, 5 * n))
    poller.poll(row("alice", 1, SINCE, 400, 40))  # bob's session closes
    config = Config(database=db_path, interval=10, api=ApiConfig(cache_mb=0))
    paths = ["/stats", "/stats/alice", "/stats/bob", "/analytics", "/clients", "/stats/system"]

    def answers():
        client = falcon.testing.TestClient(create_app(config, clock=lambda: T0 + 45))
        return {path: client.simulate_get(f"/api/v1{path}").json for path in paths}

    before = answers()
    with engine.connect() as conn:
        status = meta.read_status(conn)
    as_schema_3(engine)
    with engine.connect() as conn:
        assert "hosts" not in inspect(conn).get_table_names()
        assert meta.get(conn, "collector.heartbeat") == str(T0 + 30)
    assert init_db(engine, "vpn1.example.org") == (3, schema.SCHEMA_VERSION)
    with engine.connect() as conn:
        upgraded = meta.read_status(conn)
        keys = set(conn.execute(select(schema.meta.c.key)).scalars())
        [host_id] = conn.execute(select(schema.hosts.c.id)).scalars()
        first_watched = meta.source_values(conn, host_id, "first_watched")
        assert not any(k.startswith(("collector.", "source.", "certificates.")) for k in keys)
        assert lifetime_totals(conn) == {"alice": (300, 30, True), "bob": (10, 10, False)}
    assert list(upgraded.hosts) == ["vpn1.example.org"]
    assert upgraded.hosts["vpn1.example.org"].heartbeat == status.heartbeat == T0 + 30
    assert upgraded.sources == status.sources and first_watched == {"udp": T0}
    assert answers() == before
    # the upgrade left this process's schema whole: a database created now has every key (an
    # upgrade through AddConstraint marked them as created apart, and CREATE TABLE lost them)
    for table in (schema.clients, schema.global_history, schema.certificates):
        ddl = str(CreateTable(table).compile(dialect=engine.dialect))
        assert "PRIMARY KEY" in ddl, ddl
    assert "UNIQUE (common_name, host_id)" in str(
        CreateTable(schema.clients).compile(dialect=engine.dialect)
    )
    # the collector carries on under its host name: only new bytes are counted
    poller.collector.store = Store(engine, "vpn1.example.org")
    poller.collector._state = None  # as after a restart: everything reloaded
    poller.poll(row("alice", 1, SINCE, 450, 45))
    with engine.connect() as conn:
        assert lifetime_totals(conn) == {"alice": (350, 35, True), "bob": (10, 10, False)}
    poller.close()


def test_two_collectors_racing_rollups_build_tiers_equal_to_the_raw_sums(db_path, tmp_path):
    """Two hosts' collectors, each with its own engine (as two processes), poll at once and
    each runs the rollups between its polls: whichever runs them, while the other's poll is
    in flight or late for a bucket the first already closed, every tier equals the raw sums
    of its buckets, and every byte is counted once."""
    step, polls = 120, 45
    writers = [writer_engine(db_path), writer_engine(db_path)]
    init_db(writers[0])
    hosts = [
        StatusPoller(writers[0], tmp_path, T0, step=step, host="vpn1"),
        StatusPoller(writers[1], tmp_path, T0 + 37, step=step, host="vpn2"),
    ]
    errors: list[BaseException] = []

    def run(index: int) -> None:
        poller, engine = hosts[index], writers[index]
        try:
            for n in range(1, polls + 1):
                poller.poll(
                    row("alice", 1, SINCE, 1000 * n + index, 10 * n),
                    row(f"only-{index}", 2, SINCE, 7 * n, 3 * n),
                )
                rollup.catch_up(engine, int(poller.clock.wall))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    end = max(int(h.clock.wall) for h in hosts)
    rollup.catch_up(writers[0], end)

    growth = polls - 1  # the first poll of each host counts nothing
    with writers[0].connect() as conn:
        assert lifetime_totals(conn) == {
            "alice": (2000 * growth, 20 * growth, True),
            "only-0": (7 * growth, 3 * growth, True),
            "only-1": (7 * growth, 3 * growth, True),
        }
        marks = meta.watermarks(conn)
        checked = 0
        for tier in ROLLUPS:
            raw = source_of(tier)
            while not raw.raw:
                raw = source_of(raw)
            key = raw.table.c.client_id if tier.per_client else raw.table.c.host_id
            bucket = sql_align(raw.time, tier.width).label("bucket")
            mark = marks.get(tier.name)
            if mark is None:  # no bucket of it closed yet
                continue
            if tier.per_client:  # raw samples as rows and packed
                found: dict[tuple[int, int], list[int]] = defaultdict(lambda: [0, 0])
                for cid, ts, rx, _ in packed.raw_samples(conn):
                    if ts < mark:
                        entry = found[(cid, align(ts, tier.width))]
                        entry[0] += rx
                        entry[1] += 1
                expected = [(cid, b, rx, n) for (cid, b), (rx, n) in found.items()]
            else:
                expected = conn.execute(
                    select(key, bucket, func.sum(raw.table.c.bytes_received), func.count())
                    .where(raw.time < mark)
                    .group_by(key, bucket)
                ).all()
            table = tier.table
            stored_key = table.c.client_id if tier.per_client else table.c.host_id
            stored = conn.execute(
                select(stored_key, table.c.bucket, table.c.bytes_received, table.c.samples).where(
                    table.c.bucket < mark
                )
            ).all()
            assert sorted(map(tuple, stored)) == sorted(map(tuple, expected)), tier.name
            checked += len(expected)
        assert checked > 0
    for poller in hosts:
        poller.close()
    for engine in writers:
        engine.dispose()
