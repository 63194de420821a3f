"""Rollup tiers built from data the collector wrote (a simulated OpenVPN through its own code)."""

from collections import defaultdict

import pytest
from conftest import FakeClock
from sqlalchemy import select, update

from ovpnmon_collector import rollup
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.buckets import align
from ovpnmon_common.meta import watermark_key
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.tiers import ROLLUPS, in_progress
from ovpnmon_demo.simulator import Simulation, populate

START = 1_795_651_200 - 2 * 86400 + 1234  # mid-hour, two days before 2026-11-26 00:00 UTC
END = START + 2 * 86400 + 5 * 3600


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    path = tmp_path_factory.mktemp("rollup")
    engine = engines.writer_engine(str(path / "ovpnmon.db"))
    migrations.init_db(engine)
    populate(engine, str(path / "status.log"), START, END, 300, Simulation(clients=12, seed=3))
    yield engine
    engine.dispose()


def raw_sums(conn, width, until=None):
    out = defaultdict(lambda: [0, 0, 0])
    for cid, ts, rx, tx in packed.raw_samples(conn):
        if until is not None and ts >= until:
            continue
        entry = out[(cid, align(ts, width))]
        entry[0] += rx
        entry[1] += tx
        entry[2] += 1
    return out


def tier_rows(conn, table):
    return {
        (r.client_id, r.bucket): [r.bytes_received, r.bytes_sent, r.samples]
        for r in conn.execute(select(table))
    }


def test_catch_up_builds_every_closed_bucket_exactly(history):
    now = END
    reports = {r.tier: r for r in rollup.catch_up(history, now)}
    with history.connect() as conn:
        for r in ROLLUPS:
            assert reports[r.name].watermark is not None
            wm = int(meta.get(conn, watermark_key(r.name)))
            assert wm % r.width == 0 and wm <= align(now, r.width)
        assert int(meta.get(conn, watermark_key("hourly"))) == align(now, 3600)
        for r in ROLLUPS:
            if r.name == "global_15min":
                continue
            wm = int(meta.get(conn, watermark_key(r.name)))
            # and the bucket in progress up to its open mark, in the tier that sums it
            summed = meta.read_status(conn).open_until(r.name, r.width)
            assert (summed is not None) == r.sums_open
            expected = raw_sums(conn, r.width, until=summed or wm)
            rows = tier_rows(conn, r.table)
            if in_progress(r) is not r:  # the bucket in progress is in a table of its own
                rows.update(tier_rows(conn, in_progress(r).table))
            assert rows == {k: list(v) for k, v in expected.items()}
            assert expected, r.name
        g = schema.global_history
        rows = conn.execute(select(g)).all()
        wm = int(meta.get(conn, watermark_key("global_15min")))
        expected = defaultdict(lambda: [0, 0, 0, 0])
        for row in rows:
            if row.ts < wm:
                e = expected[align(row.ts, 900)]
                e[0] += row.bytes_received
                e[1] += row.bytes_sent
                e[2] = max(e[2], row.active_count)
                e[3] += 1
        t = schema.global_15min
        got = {
            r.bucket: [r.bytes_received, r.bytes_sent, r.max_active, r.samples]
            for r in conn.execute(select(t))
        }
        assert got == dict(expected)


def snapshot(engine):
    with engine.connect() as conn:
        return {r.name: sorted(map(tuple, conn.execute(select(r.table)))) for r in ROLLUPS}


def test_running_again_changes_nothing(history):
    rollup.catch_up(history, END)
    before = snapshot(history)
    reports = rollup.catch_up(history, END)
    assert all(r.buckets == 0 for r in reports)
    assert snapshot(history) == before


def test_backfill_replaces_never_adds(history):
    rollup.catch_up(history, END)
    before = snapshot(history)
    t = schema.stats_hourly
    with history.begin() as conn:  # damage: a bucket doubled, as a buggy version might have left it
        bucket = conn.execute(select(t.c.bucket).order_by(t.c.bucket).limit(1).offset(5)).scalar()
        conn.execute(
            update(t).where(t.c.bucket == bucket).values(bytes_received=t.c.bytes_received * 2)
        )
    assert snapshot(history) != before
    reports = rollup.backfill(history, START, END, ["hourly"])
    assert reports[0].buckets > 0
    assert snapshot(history) == before
    rollup.backfill(history, START, END)  # every tier, twice over
    assert snapshot(history) == before


class Ticking(FakeClock):
    """Each look at the monotonic clock is one second later."""

    def __init__(self) -> None:
        super().__init__(mono=0.0)

    def monotonic(self) -> float:
        self.mono += 1
        return self.mono - 1


def test_deadline_stops_between_transactions_and_resumes(tmp_path):
    engine = engines.writer_engine(str(tmp_path / "x.db"))
    migrations.init_db(engine)
    end = START + 30 * 3600
    populate(engine, str(tmp_path / "s.log"), START, end, 600, Simulation(clients=3))
    reports = {r.tier: r for r in rollup.catch_up(engine, end, deadline=2, clock=Ticking())}
    assert reports["quarter_hour"].buckets > 0
    assert reports["hourly"].buckets == reports["daily"].buckets == 0  # out of time: left for later
    with engine.connect() as conn:
        assert meta.get(conn, watermark_key("hourly")) is None
    rollup.catch_up(engine, end)  # resumes where it stopped
    with engine.connect() as conn:
        assert int(meta.get(conn, watermark_key("hourly"))) == align(end, 3600)
        assert int(meta.get(conn, watermark_key("six_hour"))) == align(end, 21600)
