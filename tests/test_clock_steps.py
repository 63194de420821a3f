"""Clock steps never lose bytes from the tiers (issue 12, item 2): whatever the wall clock does
between polls and rollups, every tier equals the raw sums, and so do the API's views."""

from __future__ import annotations

from collections import defaultdict

import falcon.testing
from conftest import FakeClock
from sqlalchemy import func, select

from ovpnmon_api.app import create_app
from ovpnmon_collector import rollup
from ovpnmon_collector.collector import Collector
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.store import Store
from ovpnmon_common import meta, packed
from ovpnmon_common.buckets import align
from ovpnmon_common.config import Config
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.tiers import ROLLUPS, in_progress
from ovpnmon_demo.simulator import render_status

T0 = 1_795_651_200 + 100  # a day's start (UTC), plus 100 s


class Host:
    def __init__(self, tmp_path) -> None:
        self.path = tmp_path / "x.db"
        self.status = tmp_path / "status.log"
        self.engine = engines.writer_engine(str(self.path))
        migrations.init_db(self.engine)
        self.clock = FakeClock(T0)
        source = StatusFileSource("udp", str(self.status), settle=0)
        self.collector = Collector(Store(self.engine), [source], clock=self.clock)
        self.received = 0

    def poll_at(self, wall: int, moved: int = 1000) -> None:
        """A poll at wall-clock time ``wall`` (the monotonic clock only ever goes forward)."""
        self.clock.wall = wall
        self.clock.mono += 10
        self.received += moved
        rows = [SessionRow("alice", "127.0.0.1:1", "", "", self.received, 0, T0, 0)]
        self.status.write_text(render_status(rows, wall))
        assert self.collector.poll().stored

    def rollup_at(self, wall: int) -> None:
        rollup.catch_up(self.engine, wall)

    def tier_sums(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {
                r.name: sum(
                    int(conn.execute(select(func.sum(t.c.bytes_received))).scalar() or 0)
                    for t in {r.table, in_progress(r).table}  # the bucket in progress too
                )
                for r in ROLLUPS
            }

    def check_every_bucket(self) -> None:
        """Every bucket before a tier's watermark holds exactly the raw sum of its time, and the
        bucket in progress (where it is summed) the raw sum before its open mark."""
        with self.engine.connect() as conn:
            raw = [(ts, rx) for _, ts, rx, _ in packed.raw_samples(conn)]
            for r in ROLLUPS:
                mark = meta.get(conn, f"rollup.{r.name}.watermark")
                if mark is None:
                    continue
                summed = meta.read_status(conn).open_until(r.name, r.width)
                expected: dict[int, int] = defaultdict(int)
                for ts, rx in raw:
                    if ts < (summed or int(mark)):
                        expected[align(ts, r.width)] += rx
                rows = conn.execute(
                    select(r.table.c.bucket, r.table.c.bytes_received).where(
                        r.table.c.bucket < (int(mark) + r.width if summed else int(mark))
                    )
                ).all()
                if summed and in_progress(r) is not r:  # the bucket in progress, from its table
                    t = in_progress(r).table
                    rows += conn.execute(
                        select(t.c.bucket, t.c.bytes_received).where(t.c.bucket == int(mark))
                    ).all()
                assert {b: rx for b, rx in rows if rx} == dict(expected), r.name

    def api_totals(self, now: int, views=("24h", "7d", "30d")) -> dict[str, int]:
        app = create_app(Config(database=str(self.path)), clock=lambda: now)
        client = falcon.testing.TestClient(app)
        found = {}
        for view in views:
            body = client.simulate_get("/api/v1/analytics", params={"range": view}).json
            found[f"analytics {view}"] = body["data"]["traffic_distribution"]["rx"]
            history = client.simulate_get("/api/v1/stats/alice", params={"range": view}).json[
                "data"
            ]["history"]
            found[f"stats {view}"] = sum(p["bytes_received"] for p in history)
        return found


def test_a_clock_stepped_back_across_a_bucket_keeps_every_byte_in_the_tiers(tmp_path):
    host = Host(tmp_path)
    host.poll_at(T0)  # bucket 1
    host.poll_at(T0 + 900)  # bucket 2
    host.rollup_at(T0 + 900)  # bucket 1 is final in every 15-minute tier
    host.poll_at(T0 + 200)  # the clock stepped back 700 s, into bucket 1
    host.poll_at(T0 + 1000)
    host.rollup_at(T0 + 1800)  # bucket 2 final
    host.check_every_bucket()
    assert host.tier_sums()["quarter_hour"] == host.tier_sums()["global_15min"] == 4000
    assert set(host.api_totals(T0 + 1800).values()) == {4000}
    host.rollup_at(T0 + 86400 + 3600)  # the coarser tiers final too
    assert set(host.tier_sums().values()) == {4000}
    host.check_every_bucket()
    assert set(host.api_totals(T0 + 86400 + 3600, ("7d", "30d")).values()) == {4000}


def test_one_poll_a_day_ahead_never_keeps_the_next_hours_out_of_the_tiers(tmp_path):
    host = Host(tmp_path)
    host.poll_at(T0)
    host.poll_at(T0 + 86400)  # the clock a day ahead, for one poll and a rollup
    host.rollup_at(T0 + 86400 + 60)
    for minute in range(10, 4 * 60 + 10, 10):  # back to the right time: four hours of polls
        host.poll_at(T0 + 60 * minute)
        host.rollup_at(T0 + 60 * minute + 5)
        host.check_every_bucket()
    received = host.received
    assert set(host.api_totals(T0 + 4 * 3600 + 600).values()) == {received - 1000}  # all but +1d
    host.rollup_at(T0 + 3 * 86400)
    assert set(host.tier_sums().values()) == {received}
    host.check_every_bucket()


def test_a_poll_before_the_open_mark_adds_itself_to_the_bucket_in_progress(tmp_path):
    host = Host(tmp_path)
    host.poll_at(T0)
    host.poll_at(T0 + 900)  # the next bucket, in progress
    host.rollup_at(T0 + 1000)  # ... summed up to T0 + 1000
    with host.engine.connect() as conn:
        assert meta.get(conn, meta.open_key("quarter_hour")) == str(T0 + 1000)
    host.poll_at(T0 + 950)  # the clock stepped back, before the mark
    host.poll_at(T0 + 1100)
    host.check_every_bucket()
    assert set(host.api_totals(T0 + 1200).values()) == {4000}
    host.rollup_at(T0 + 1300)  # the samples since the mark added
    host.check_every_bucket()
    assert set(host.api_totals(T0 + 1350).values()) == {4000}
    host.rollup_at(T0 + 2700)  # the bucket final
    host.check_every_bucket()
    assert host.tier_sums()["quarter_hour"] == 4000
