"""Property: every tier's sums equal the raw sums over the same buckets, for any history — with
the wall clock stepping back and ahead between polls and rollups, before and after prune (for
what prune keeps), and as the API reads them (tier + finer tail)."""

import tempfile
from collections import defaultdict
from pathlib import Path

from conftest import FakeClock
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ovpnmon_api.read import series as read_series
from ovpnmon_collector import prune, rollup
from ovpnmon_collector.collector import Collector
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.store import Store
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.buckets import align
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.tiers import ROLLUPS, in_progress
from ovpnmon_demo.simulator import render_status, write_in_place

T0 = 1_795_000_000

step = st.tuples(
    # how the wall clock moves before the poll: mostly forward, sometimes a step back or ahead
    # across a 15-minute, hour or day edge (the monotonic clock always goes forward)
    st.one_of(
        st.sampled_from([7, 60, 600, 3599, 3600, 5 * 3600 + 1, 86400 + 13]),
        st.sampled_from([-7, -700, -3600, -6 * 3600 - 1, -86400 - 13, 2 * 86400 + 1]),
    ),
    st.lists(  # per client: None = not connected, "new" = (re)connect, int = bytes moved
        st.one_of(st.none(), st.just("new"), st.integers(0, 10**9)), min_size=3, max_size=3
    ),
    st.booleans(),  # a rollup after this poll, at the wall clock of then
)


def replay(workdir: Path, steps, start: int = T0, database: str | None = None) -> tuple:
    """Poll ``steps`` (see ``step``) through the real collector from a status file into
    ``database`` (default: a file in ``workdir``); the engine and the wall clock at the end."""
    engine = engines.writer_engine(database or str(workdir / "x.db"))
    migrations.init_db(engine)
    status = str(workdir / "status.log")
    clock = FakeClock(start)
    collector = Collector(Store(engine), [StatusFileSource("p", status, settle=0)], clock=clock)
    open_sessions: dict[int, list[int]] = {}
    next_id = 0
    now = start
    for gap, actions, rolls_up in steps:
        now += gap
        clock.wall = now
        clock.mono += 10
        for client, action in enumerate(actions):
            if action is None:
                open_sessions.pop(client, None)
            elif action == "new" or client not in open_sessions:
                open_sessions[client] = [next_id, now - 1, 0, 0]
                next_id += 1
            if isinstance(action, int) and client in open_sessions:
                open_sessions[client][2] += action
                open_sessions[client][3] += action // 3
        rows = [
            SessionRow(f"c{client}", f"127.0.0.1:{cid}", "", "", rx, tx, since, cid)
            for client, (cid, since, rx, tx) in open_sessions.items()
        ]
        write_in_place(status, render_status(rows, now))
        assert collector.poll().stored
        if rolls_up:
            rollup.catch_up(engine, now)
            check_tiers(engine)  # at every moment, not only at the end
    return engine, now


def raw_by_bucket(conn, width, until=None):
    out = defaultdict(lambda: [0, 0])
    for cid, ts, rx, tx in packed.raw_samples(conn):
        if until is not None and ts >= until:
            continue
        out[(cid, align(ts, width))][0] += rx
        out[(cid, align(ts, width))][1] += tx
    return out


def check_tiers(engine, raw_cutoff=None, kept=None):
    """Every tier row equals the raw sum of its bucket, and every bucket with raw bytes before the
    tier's watermark has its row — where raw samples (from ``raw_cutoff``) and the tier's rows
    (from ``kept[table]``) are still kept. The bucket in progress, where the tier sums it, holds
    the raw sum before its open mark."""
    kept = kept or {}
    with engine.connect() as conn:
        for r in ROLLUPS:
            if r.name == "global_15min":
                continue
            wm = meta.get(conn, f"rollup.{r.name}.watermark")
            if wm is None:
                continue
            low = max(raw_cutoff or 0, kept.get(r.table.name) or 0)
            summed = meta.read_status(conn).open_until(r.name, r.width)
            raw = raw_by_bucket(conn, r.width, until=summed)
            final = int(wm) + r.width if summed else int(wm)
            rows = {
                (x.client_id, x.bucket): [x.bytes_received, x.bytes_sent]
                for x in conn.execute(select(r.table))
            }
            if summed and in_progress(r) is not r:  # the bucket in progress, from its own table
                t = in_progress(r).table
                for x in conn.execute(select(t).where(t.c.bucket == int(wm))):
                    rows[(x.client_id, x.bucket)] = [x.bytes_received, x.bytes_sent]
            for (cid, bucket), sums in rows.items():
                if bucket >= (raw_cutoff or 0):
                    assert sums == raw.get((cid, bucket), [0, 0]), (r.name, bucket)
            for (cid, bucket), sums in raw.items():
                if low <= bucket < final and sums != [0, 0]:
                    assert rows.get((cid, bucket)) == sums, (r.name, bucket, "missing")


# a new database for each example (fresh_database), whatever the fixture's scope
ONE_DATABASE_PER_EXAMPLE = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]


@settings(max_examples=60, deadline=None, suppress_health_check=ONE_DATABASE_PER_EXAMPLE)
@given(st.lists(step, min_size=1, max_size=30), st.integers(0, 3), st.data())
def test_tiers_equal_raw_sums_before_and_after_prune(fresh_database, steps, raw_days, data):
    note(f"steps={steps!r} raw_days={raw_days}")
    with tempfile.TemporaryDirectory() as tmp, fresh_database() as database:
        engine, now = replay(Path(tmp), steps, database=database)
        rollup.catch_up(engine, now)
        check_tiers(engine)
        # the API's view: any window, tier up to its watermark plus finer data after it
        with engine.connect() as conn:
            status = meta.read_status(conn)
            raw = raw_by_bucket(conn, 1)
            times = [ts for _, ts in raw] or [T0]
            start = data.draw(st.integers(min(times) - 1, max(times) + 1))
            end = data.draw(st.integers(start, max(times) + 2))
            # every client (no limit) through the statement behind /analytics' top clients
            ranked = read_series.top_clients(conn, status, start, end, limit=1_000_000)
            clients = select(schema.clients.c.id, schema.clients.c.common_name)
            names = dict(conn.execute(clients).all())
            expected = defaultdict(lambda: [0, 0])
            for (cid, ts), (rx, tx) in raw.items():
                if start <= ts < end:
                    expected[names[cid]][0] += rx
                    expected[names[cid]][1] += tx
            assert {name: [rx, tx] for name, rx, tx in ranked} == {
                k: v for k, v in expected.items() if v != [0, 0]
            }
            totals = [rx + tx for _, rx, tx in ranked]
            assert totals == sorted(totals, reverse=True)
        # prune keeps whole days, never what is not rolled up: what is left still agrees
        retention = RetentionConfig(
            raw_days=raw_days, hourly_days=raw_days + 1, six_hour_days=raw_days + 2, daily_days=0
        )
        report = prune.prune(engine, retention, now)
        check_tiers(engine, raw_cutoff=report.cutoffs["usage_history"], kept=report.cutoffs)
        engine.dispose()
