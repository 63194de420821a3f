"""The HTTP layer through falcon.testing, on a database the collector's own code filled."""

import json
from collections import defaultdict
from urllib.parse import quote

import falcon.testing
import pytest
from sqlalchemy import select

from ovpnmon_api.app import create_app
from ovpnmon_api.resources import render
from ovpnmon_collector import rollup
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.buckets import align
from ovpnmon_common.config import ApiConfig, Config, RetentionConfig
from ovpnmon_common.formatting import format_timestamp
from ovpnmon_common.planner import AUTO, RANGES
from ovpnmon_common.storage import engines, migrations
from ovpnmon_demo.simulator import Simulation, populate

DAY = 86400
NOW = 1_795_651_200 + 5 * 3600 + 1234  # 2026-11-26 05:20:34 UTC: mid-bucket for every width
START = NOW - 32 * DAY
SPECIAL = ("system", "alice smith", "jörg/ü", "100%&?=#")


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    path = tmp_path_factory.mktemp("api") / "ovpnmon.db"
    engine = engines.writer_engine(str(path))
    migrations.init_db(engine)
    sim = Simulation(clients=16, seed=11, extra_names=SPECIAL)
    # 32 days at 2 h, then the last 26 hours at 10 min: every range has data
    populate(engine, str(path.with_suffix(".status")), START, NOW - 26 * 3600, 7200, sim)
    populate(engine, str(path.with_suffix(".status")), NOW - 26 * 3600, NOW - 10, 600, sim)
    rollup.catch_up(engine, NOW - 10)
    engines.close_writer(engine)
    return str(path)


def make_client(database, **api):
    config = Config(
        database=database,
        interval=600,
        api=ApiConfig(**api),
        retention=RetentionConfig(raw_days=40),
    )
    return falcon.testing.TestClient(create_app(config, clock=lambda: NOW))


@pytest.fixture(scope="module")
def client(database):
    return make_client(database)


def get(client, path, **params):
    return client.simulate_get(f"/api/v1{path}", params=params or None)


def raw(database):
    engine = engines.reader_engine(database)
    with engine.connect() as conn:
        c = schema.clients
        names = dict(conn.execute(select(c.c.id, c.c.common_name)).all())
        samples = [(names[cid], ts, rx, tx) for cid, ts, rx, tx in packed.raw_samples(conn)]
        g = schema.global_history
        columns = (g.c.ts, g.c.bytes_received, g.c.bytes_sent, g.c.active_count, g.c.interval)
        glob = [tuple(r) for r in conn.execute(select(*columns).order_by(g.c.ts))]
    return samples, glob


# --- /stats/<cn> ------------------------------------------------------------------------------


@pytest.mark.parametrize("range_name", list(RANGES))
def test_client_history_every_range_is_exact_and_zero_filled(client, database, range_name):
    samples, _ = raw(database)
    name = "user-000"
    body = get(client, f"/stats/{name}", range=range_name).json
    assert body["success"] is True
    data = body["data"]
    _, step = AUTO[range_name]
    history = data["history"]
    assert len(history) == data["meta"]["record_count"] == -(-RANGES[range_name] // step)
    assert data["meta"]["interval_seconds"] == step
    last = align(NOW, step)
    first = last - (len(history) - 1) * step
    assert history[-1]["timestamp"] == format_timestamp(last)  # the bucket in progress
    assert history[0]["timestamp"] == format_timestamp(first)
    expected = defaultdict(lambda: [0, 0])
    for cn, ts, rx, tx in samples:
        if cn == name and first <= ts < last + step:
            expected[align(ts, step)][0] += rx
            expected[align(ts, step)][1] += tx
    got = {p["timestamp"]: [p["bytes_received"], p["bytes_sent"]] for p in history}
    assert got == {
        format_timestamp(b): expected.get(b, [0, 0]) for b in range(first, last + step, step)
    }
    assert sum(p["bytes_received"] for p in history) > 0
    for p in history:
        assert p["bytes_received_rate_mbps"] == round(p["bytes_received"] * 8 / step / 1e6, 3)


def test_client_body_keeps_the_contract_and_adds_fields(client, database):
    data = get(client, "/stats/user-001").json["data"]
    assert set(data) >= {"common_name", "status", "current_rates", "totals", "history", "meta"}
    assert data["status"] in ("Active", "Inactive")
    assert set(data["current_rates"]) == {"recv_mbps", "sent_mbps"}
    assert isinstance(data["totals"]["received_mb"], float)
    assert set(data["meta"]) >= {"resolution_used", "record_count"}
    assert data["meta"]["resolution_used"] == "usage_history_hires"
    assert {"last_seen", "connected_since", "sessions", "first_seen"} <= set(data)
    samples, _ = raw(database)
    total_rx = sum(rx for cn, _, rx, _ in samples if cn == "user-001")
    assert data["totals"]["received_bytes"] == total_rx
    assert data["totals"]["received_mb"] == round(total_rx / 2**20, 2)


def test_explicit_resolutions(client):
    assert (
        len(get(client, "/stats/user-000", range="7d", resolution="hourly").json["data"]["history"])
        == 168
    )
    body = get(client, "/stats/user-000", range="30d", resolution="daily").json["data"]
    assert body["meta"]["resolution_used"] == "stats_daily" and len(body["history"]) == 30
    raw_body = get(client, "/stats/user-000", range="1h", resolution="raw").json["data"]
    assert raw_body["meta"]["resolution_used"] == "usage_history"
    assert 5 <= len(raw_body["history"]) <= 7  # one sample per 600 s poll
    assert (
        get(client, "/stats/user-000", range="24h", resolution="5min").json["data"]["meta"][
            "record_count"
        ]
        == 288
    )


@pytest.mark.parametrize("name", (*SPECIAL, "shared-laptop"))
def test_names_with_spaces_unicode_and_url_characters(client, name):
    paths = [f"/clients/{quote(name, safe='')}/stats"]  # every name, '/' included
    if name != "system":
        paths.append(f"/stats/{quote(name, safe='')}")
    for path in paths:
        body = client.simulate_get(f"/api/v1{path}").json
        assert body["success"] is True, (path, body)
        assert body["data"]["common_name"] == name
    assert client.simulate_post(f"/api/v1{paths[0]}").status_code == 405


def test_system_is_the_server_not_a_client(client):
    data = get(client, "/stats/system").json["data"]
    assert set(data) >= {"total_clients", "active_clients", "total_received_gb", "total_sent_gb"}
    assert data["total_clients"] == 16


def test_duplicate_cn_shows_its_sessions(client):
    data = get(client, "/stats/shared-laptop").json["data"]
    # the simulation connects this CN twice at once (duplicate-cn) or not at all
    if data["status"] == "Active":
        assert len(data["sessions"]) == 2 and data["connected_since"] is not None
    else:
        assert data["sessions"] == [] and data["connected_since"] is None
    assert data["totals"]["received_bytes"] > 0


# --- /analytics -------------------------------------------------------------------------------


@pytest.mark.parametrize(("range_name", "step"), [("24h", 900), ("7d", 6300), ("30d", 27000)])
def test_analytics_is_96_exact_points(client, database, range_name, step):
    body = get(client, "/analytics", range=range_name).json
    assert body["success"] and body["range"] == range_name
    data = body["data"]
    points = data["global_history_24h"]
    assert len(points) == 96
    last = align(NOW, step)
    first = last - 95 * step
    _, glob = raw(database)
    expected = defaultdict(lambda: [0, 0, 0])
    for ts, rx, tx, active, _ in glob:
        if first <= ts < last + step:
            e = expected[align(ts, step)]
            e[0] += rx
            e[1] += tx
            e[2] = max(e[2], active)
    got = {p["timestamp"]: [p["total_rx"], p["total_tx"], p["active_count"]] for p in points}
    assert got == {
        format_timestamp(b): expected.get(b, [0, 0, 0]) for b in range(first, last + step, step)
    }
    assert data["max_concurrent_24h"] == max(e[2] for e in expected.values())
    assert data["traffic_distribution"] == {
        "rx": sum(e[0] for e in expected.values()),
        "tx": sum(e[1] for e in expected.values()),
    }
    top = data["top_clients_24h"]
    assert 1 <= len(top) <= 10
    totals = [t["total"] for t in top]
    assert totals == sorted(totals, reverse=True)
    samples, _ = raw(database)
    per_cn = defaultdict(int)
    for cn, ts, rx, tx in samples:
        if first <= ts < last + step:
            per_cn[cn] += rx + tx
    assert [(t["common_name"], t["total"]) for t in top] == sorted(
        per_cn.items(), key=lambda kv: (-kv[1], kv[0])
    )[: len(top)] or totals == sorted(per_cn.values(), reverse=True)[: len(top)]


# --- the rest of the contract -----------------------------------------------------------------


def test_stats_clients_and_certificates(client):
    stats = get(client, "/stats").json
    assert stats["success"] and stats["count"] == len(stats["data"]) == 16
    row = stats["data"][0]
    assert {"common_name", "status", "current_recv_rate_mbps", "total_received_mb"} <= set(row)
    clients = get(client, "/clients").json
    assert [c["common_name"] for c in clients["data"]] == sorted(
        c["common_name"] for c in clients["data"]
    )
    assert all(set(c) == {"common_name", "status"} for c in clients["data"])
    certs = get(client, "/certificates").json
    assert certs == {"success": True, "count": 0, "data": []}


def test_health_states(database):
    fresh = falcon.testing.TestClient(create_app(Config(database=database), clock=lambda: NOW))
    body = fresh.simulate_get("/api/v1/health").json
    assert body["status"] == "healthy" and body["success"] is True
    stale = falcon.testing.TestClient(
        create_app(Config(database=database), clock=lambda: NOW + 3600)
    )
    body = stale.simulate_get("/api/v1/health").json
    assert body["status"] == "degraded" and "is ovpnmon-collector running?" in body["reason"]


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        (
            "/stats/user-000",
            {"range": "2d"},
            400,
            "range must be one of 1h, 3h, 6h, 12h, 24h, 7d, 30d, 90d, 1y; got '2d'",
        ),
        (
            "/stats/user-000",
            {"resolution": "1min"},
            400,
            "resolution must be one of auto, raw, 5min, hourly, 6h, daily",
        ),
        (
            "/stats/user-000",
            {"range": "1y", "resolution": "5min"},
            400,
            "needs raw data older than the 40 days that [retention] raw_days keeps",
        ),
        (
            "/stats/user-000",
            {"rnage": "1h"},
            400,
            "unknown query parameter 'rnage'; accepted: range, resolution",
        ),
        ("/analytics", {"range": "1h"}, 400, "range must be one of 24h, 7d, 30d; got '1h'"),
        ("/stats", {"x": "1"}, 400, "unknown query parameter 'x'; accepted: host"),
        ("/stats/nobody", {}, 404, "no client named 'nobody'; GET /api/v1/clients lists them"),
        ("/nothing", {}, 404, "no endpoint at /api/v1/nothing"),
    ],
)
def test_errors_are_json_that_says_what_is_allowed(client, path, params, status, message):
    result = get(client, path, **params)
    assert result.status_code == status
    assert result.json["success"] is False
    assert message in result.json["error"]


def test_every_body_is_written_by_one_json_writer(client):
    # a body built by a resource, an error Falcon raises, and resp.media: the same writer
    found = get(client, "/stats/user-000", range="1h")
    missing = get(client, "/nothing")
    health = get(client, "/health")
    for result in (found, missing, health):
        assert result.content == render(json.loads(result.content))


def test_retention_limits_are_400(database):
    short = falcon.testing.TestClient(
        create_app(Config(database=database, interval=300), clock=lambda: NOW)
    )
    result = short.simulate_get(
        "/api/v1/stats/user-000", params={"range": "7d", "resolution": "raw"}
    )
    assert result.status_code == 400 and "raw_days" in result.json["error"]


def test_writes_are_not_allowed(client):
    result = client.simulate_post("/api/v1/stats")
    assert result.status_code == 405
    assert result.json == {
        "success": False,
        "error": "POST is not allowed on /api/v1/stats: the API is read-only, use GET",
    }


def test_missing_database_is_503_everywhere(tmp_path):
    gone = falcon.testing.TestClient(
        create_app(Config(database=str(tmp_path / "gone.db")), clock=lambda: NOW)
    )
    for path in ("/stats", "/analytics", "/stats/x", "/clients", "/certificates", "/stats/system"):
        result = gone.simulate_get(f"/api/v1{path}")
        assert result.status_code == 503, path
        assert result.json == {
            "success": False,
            "error": f"database unavailable: {tmp_path / 'gone.db'} does not exist (yet): the "
            "collector creates it; is ovpnmon-collector running?",
        }
    health = gone.simulate_get("/api/v1/health")
    assert health.status_code == 503 and health.json["status"] == "unhealthy"
    assert not (tmp_path / "gone.db").exists()


def test_bearer_tokens(database):
    guarded = make_client(database, tokens=("t0ken",))
    assert guarded.simulate_get("/api/v1/stats").status_code == 401
    assert (
        guarded.simulate_get("/api/v1/stats", headers={"Authorization": "Bearer nope"}).status_code
        == 401
    )
    assert (
        guarded.simulate_get("/api/v1/stats", headers={"Authorization": "Bearer t0ken"}).status_code
        == 200
    )
    assert guarded.simulate_get("/api/v1/health").status_code == 200  # monitoring needs no token
    body = guarded.simulate_get("/api/v1/stats").json
    assert body == {
        "success": False,
        "error": "a bearer token is required: send 'Authorization: Bearer <token>'",
    }
    wrong = guarded.simulate_get("/api/v1/stats", headers={"Authorization": "Bearer nope"})
    assert wrong.json["error"] == "this bearer token is not one of [api] tokens"
    basic = guarded.simulate_get("/api/v1/stats", headers={"Authorization": "Basic eDp5"})
    assert (
        basic.json["error"] == "the Authorization header must be 'Bearer <token>', not 'Basic ...'"
    )


def failing_source_database(tmp_path, state="error"):
    """A copy of a small collected database whose source 'udp' is in ``state``."""
    import json
    import shutil

    path = tmp_path / "failing.db"
    engine = engines.writer_engine(str(path))
    migrations.init_db(engine)
    populate(engine, str(tmp_path / "s.log"), NOW - 3600, NOW - 10, 600, Simulation(clients=3))
    health = {"state": state, "message": "status file /run/x.log does not exist", "since": NOW}
    with engine.begin() as conn:
        host = conn.execute(select(schema.hosts.c.id)).scalar_one()
        meta.put_sources(conn, host, "health", {"udp": json.dumps(health)})
    engines.close_writer(engine)
    shutil.rmtree(tmp_path / "unused", ignore_errors=True)
    return str(path)


def test_health_is_degraded_naming_a_failing_source(tmp_path):
    client = make_client(failing_source_database(tmp_path))
    body = client.simulate_get("/api/v1/health").json
    assert body["status"] == "degraded"
    assert body["reason"] == "source udp: status file /run/x.log does not exist"
    assert body["failing_sources"] == ["udp"]


def test_health_without_a_token_gives_the_verdict_only(tmp_path):
    client = make_client(failing_source_database(tmp_path), tokens=("t0ken",))
    brief = client.simulate_get("/api/v1/health")
    assert brief.status_code == 200
    assert brief.json == {"success": True, "status": "degraded", "reason": "1 of 2 sources failing"}
    full = client.simulate_get("/api/v1/health", headers={"Authorization": "Bearer t0ken"}).json
    assert full["reason"] == "source udp: status file /run/x.log does not exist"
    assert "/run/x.log" in str(full["sources"])
    gone = make_client(str(tmp_path / "gone.db"), tokens=("t0ken",))
    result = gone.simulate_get("/api/v1/health")
    assert (result.status_code, result.json["error"]) == (503, "the database cannot be read")


def test_every_get_answers_head(client):
    for path in ("/health", "/stats", "/stats/user-000", "/analytics", "/clients", "/openapi.json"):
        got = client.simulate_get(f"/api/v1{path}")
        head = client.simulate_head(f"/api/v1{path}")
        assert head.status_code == got.status_code == 200, path
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"]
    assert client.simulate_head("/api/v1/stats/nobody").status_code == 404


def test_a_cache_buster_is_accepted_and_ignored(client):
    plain = client.simulate_get("/api/v1/stats/user-000", params={"range": "1h"})
    busted = client.simulate_get(
        "/api/v1/stats/user-000", params={"range": "1h", "_": "1764612345678"}
    )
    assert busted.status_code == 200 and busted.json == plain.json
    assert client.simulate_get("/api/v1/clients", params={"_": "1"}).status_code == 200


def test_cors_origins(database):
    open_to = make_client(database, cors_origins=("https://dash.example",))
    result = open_to.simulate_get("/api/v1/clients", headers={"Origin": "https://dash.example"})
    assert result.headers.get("access-control-allow-origin") == "https://dash.example"
    other = open_to.simulate_get("/api/v1/clients", headers={"Origin": "https://evil.example"})
    assert "access-control-allow-origin" not in other.headers


def test_a_newline_in_a_path_cannot_forge_an_access_log_line(client, caplog):
    with caplog.at_level("INFO", "ovpnmon.api.access"):
        client.simulate_get("/api/v1/stats/a%0A127.0.0.1 GET /api/v1/health 200 0.1ms")
    (line,) = [r.getMessage() for r in caplog.records if r.name == "ovpnmon.api.access"]
    assert "\n" not in line and "/stats/a\\x0a127.0.0.1 GET /api/v1/health" in line
