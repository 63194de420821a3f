"""ovpnmon's answers equal the exact reference over the peer benchmark's world
(``ovpnmon_demo.world``): clients reconnecting, OpenVPN restarting (client ids handed out
again), the collector down for 20 minutes, polled through the collector's own path, the tiers
rolled up; on both engines. The reference is computed apart from ovpnmon's code: each session's
counters minus what the previous poll showed of it, at the poll's 15-minute bucket."""

from __future__ import annotations

import falcon.testing
import pytest
from conftest import stored_totals

from ovpnmon_api.app import create_app
from ovpnmon_collector import pack, rollup
from ovpnmon_common.buckets import DAY
from ovpnmon_common.config import Config, RetentionConfig
from ovpnmon_common.formatting import parse_timestamp
from ovpnmon_common.planner import ANALYTICS, bucketed, plan
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.tiers import GLOBAL_15MIN
from ovpnmon_demo.world import BUCKET, Dataset, Reference, feed

END = 1_795_717_500 // BUCKET * BUCKET + BUCKET // 2  # in the middle of a bucket, as a "now"


def moved(buckets) -> dict[int, list[int]]:
    """The buckets in which a byte moved."""
    return {bucket: list(v) for bucket, v in buckets.items() if v != [0, 0]}


@pytest.fixture
def world(db_path, tmp_path):
    """36 hours of 12 clients polled every 5 minutes, with two OpenVPN restarts and two gaps:
    (the dataset, its reference, an API client with the clock at its end)."""
    dataset = Dataset(clients=12, start=END - 36 * 3600, end=END, interval=300, seed=5)
    assert len(dataset.restarts) == 2 and len(dataset.gaps) == 2
    engine = engines.writer_engine(db_path)
    migrations.init_db(engine)
    reference = Reference()
    feed(dataset, engine, str(tmp_path / "status.log"), reference.poll)
    rollup.catch_up(engine, END)
    pack.catch_up(engine)  # every answer below reads packed raw samples where they are
    engine.dispose()
    app = create_app(Config(database=db_path), clock=lambda: float(END))
    return dataset, reference, falcon.testing.TestClient(app)


def test_every_answer_equals_the_reference(world, db_path):
    dataset, reference, client = world
    # whole server, 96 buckets of 24 h and 7 d (tiers, their edges and raw samples)
    for range_name in ("24h", "7d"):
        step = ANALYTICS[range_name]
        planned = bucketed(range_name, GLOBAL_15MIN, step, END)
        want = reference.server(planned.start, planned.end, step)
        body = client.simulate_get(f"/api/v1/analytics?range={range_name}").json["data"]
        got = {
            parse_timestamp(p["timestamp"]): [p["total_rx"], p["total_tx"]]
            for p in body["global_history_24h"]
        }
        assert moved(got) == moved(want), range_name
    # the top 10 of 24 h, bytes and order
    planned = bucketed("24h", GLOBAL_15MIN, ANALYTICS["24h"], END)
    body = client.simulate_get("/api/v1/analytics?range=24h").json["data"]
    top = [(e["common_name"], e["total"]) for e in body["top_clients_24h"]]
    assert top == reference.top(planned.start, planned.end)
    # every client's 24 h in 15-minute buckets
    series = plan("24h", None, END, RetentionConfig())
    for person in dataset.people:
        want = reference.client(person.name, series.start, series.end, BUCKET)
        body = client.simulate_get(f"/api/v1/stats/{person.name}?range=24h")
        if not reference.buckets[person.name]:
            assert body.status_code == 404  # never connected
            continue
        points = body.json["data"]["history"]
        got = {
            parse_timestamp(p["timestamp"]): [p["bytes_received"], p["bytes_sent"]] for p in points
        }
        assert moved(got) == moved(want), person.name
    # lifetime totals: every byte the polls showed
    lifetime = {
        name: (sum(rx for rx, _ in buckets.values()), sum(tx for _, tx in buckets.values()))
        for name, buckets in reference.buckets.items()
    }
    assert {name: (rx, tx) for name, (rx, tx, _) in stored_totals(db_path).items()} == lifetime


def test_a_history_polled_once_a_day_keeps_its_polls():
    """``generate.py`` polls a year of history once a day. The collector's daily 20-minute gap
    was drawn on the poll grid, which for a daily interval is midnight: from a start within 20
    minutes after midnight every poll fell in a gap (``generate.py`` run between 01:00 and
    01:20 UTC, its history starting an hour early, made a year of no poll at all). A gap
    shorter than the interval now falls anywhere in its day, and drops a poll only where one
    falls in it."""
    start = END // DAY * DAY - 400 * DAY + 5 * 60  # 00:05
    dataset = Dataset(clients=3, start=start, end=start + 365 * DAY, interval=DAY, seed=1)
    polled = [now for now, _ in dataset.polls()]
    assert len(dataset.gaps) >= 360, "the collector is still down 20 minutes every day"
    # a day's poll is lost where its day's gap covers it: about 365 * GAP / DAY of them
    assert 350 < len(polled) <= 365
