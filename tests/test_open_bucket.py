"""The 15-minute tier's bucket in progress, summed up to its open mark in a table of its own
(``ovpnmon_collector.rollup.sum_open``; by the daemon after every poll, ``sum_recent``), and the
day in progress: readers take them from their tables and only the samples after the mark from raw
samples, and every answer stays what raw samples alone give."""

from __future__ import annotations

import falcon.testing
import pytest
from conftest import raw_reading_answers
from sqlalchemy import func, select

from ovpnmon_api.app import create_app
from ovpnmon_api.read import series
from ovpnmon_collector import daemon, rollup
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.buckets import DAY, align
from ovpnmon_common.config import Config
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.tiers import BY_NAME, in_progress
from ovpnmon_common.tiers import OPEN as OPEN_TIERS
from ovpnmon_demo.clock import ManualClock
from ovpnmon_demo.world import BUCKET, Dataset, feed

END = 1_795_717_500 // BUCKET * BUCKET + BUCKET // 2  # in the middle of a bucket, as a "now"
QUARTER = BY_NAME["quarter_hour"]
OPEN = meta.open_key(QUARTER.name)


@pytest.fixture
def fed(db_path, tmp_path):
    """Six hours of 8 clients polled every 30 s, nothing rolled up yet: (engine, names)."""
    dataset = Dataset(clients=8, start=END - 6 * 3600, end=END, interval=30, seed=5)
    engine = engines.writer_engine(db_path)
    migrations.init_db(engine)
    feed(dataset, engine, str(tmp_path / "status.log"))
    yield engine, [person.name for person in dataset.people]
    engine.dispose()


def answers(db_path, names) -> dict[str, bytes]:
    app = create_app(Config(database=db_path), clock=lambda: float(END))
    return raw_reading_answers(falcon.testing.TestClient(app), names, END)


def open_rows(engine) -> tuple[int | None, dict[int, tuple[int, int, int]], dict]:
    """(the open mark, the tier's rows of the bucket in progress, every client's raw sums before
    the mark in that bucket), both as client id -> (rx, tx, samples)."""
    return summed_rows(engine, QUARTER, align(END, BUCKET))


def summed_rows(engine, tier, bucket: int) -> tuple[int | None, dict, dict]:
    """(``tier``'s open mark, its rows of ``bucket``, every client's raw sums in ``[bucket,
    mark)``), rows as client id -> (rx, tx, samples)."""
    t = in_progress(tier).table
    with engine.connect() as conn:
        mark = meta.get(conn, meta.open_key(tier.name))
        rows = {
            cid: (rx, tx, n)
            for cid, rx, tx, n in conn.execute(
                select(t.c.client_id, t.c.bytes_received, t.c.bytes_sent, t.c.samples).where(
                    t.c.bucket == bucket
                )
            )
        }
        want: dict[int, list[int]] = {}
        for cid, ts, rx, tx in packed.raw_samples(conn):
            if bucket <= ts < int(mark or bucket):
                entry = want.setdefault(cid, [0, 0, 0])
                entry[0] += rx
                entry[1] += tx
                entry[2] += 1
    return int(mark) if mark else None, rows, {k: tuple(v) for k, v in want.items()}


def shifted(engine, by: int) -> int:
    """Add ``by`` bytes received to every row of the bucket in progress; how many rows."""
    t = in_progress(QUARTER).table
    with engine.begin() as conn:
        return conn.execute(
            t.update()
            .where(t.c.bucket == align(END, BUCKET))
            .values(bytes_received=t.c.bytes_received + by)
        ).rowcount


def test_the_bucket_in_progress_summed_up_to_the_mark_changes_no_answer(fed, db_path):
    engine, names = fed
    rollup.catch_up(engine, END - 400)  # a fresh bucket in progress: summed from its start
    mark, rows, want = open_rows(engine)
    assert mark == END - 400 and want and rows == want
    with engine.connect() as conn:
        status = meta.read_status(conn)
    # the readers' pieces: the tier up to the bucket in progress, that bucket from its own
    # table, raw samples after the mark
    parts = series.pieces(status, END - DAY, END)
    now = align(END, BUCKET)
    assert any(t is QUARTER and end == now for t, _, end in parts)
    assert (in_progress(QUARTER), now, now + BUCKET) in parts
    assert parts[-1] == (BY_NAME["raw"], END - 400, END)
    summed = answers(db_path, names)
    # the answers compared do read that row: a byte more in it shows
    assert shifted(engine, +1) and answers(db_path, names) != summed
    shifted(engine, -1)

    rollup.catch_up(engine, END - 100)  # the same bucket again: only the samples since added
    mark, rows, want = open_rows(engine)
    assert mark == END - 100 and rows == want
    assert answers(db_path, names) == summed

    with engine.begin() as conn:  # no mark: raw samples alone, as before the tier summed them
        meta.delete(conn, [OPEN])
    assert answers(db_path, names) == summed


def test_a_mark_of_a_bucket_since_made_final_is_not_read(fed, db_path):
    engine, names = fed
    rollup.catch_up(engine, END - BUCKET - 100)  # the mark in the bucket before END's
    rollup.catch_up(engine, END - 2000)  # the clock stepped back: nothing new, the mark stays
    with engine.connect() as conn:
        assert meta.get(conn, OPEN) == str(END - BUCKET - 100)
    with engine.begin() as conn:  # that bucket final (as a rollup of a later "now" leaves it)
        meta.put(conn, meta.watermark_key(QUARTER.name), str(align(END, BUCKET)))
        rollup.rebuild(conn, QUARTER, align(END, BUCKET) - BUCKET, align(END, BUCKET))
        status = meta.read_status(conn)
    assert status.open_until(QUARTER.name, BUCKET) is None
    assert series.pieces(status, END - 3600, END)[-1] == (BY_NAME["raw"], align(END, BUCKET), END)
    before = answers(db_path, names)
    rollup.catch_up(engine, END)  # begins END's bucket afresh
    mark, rows, want = open_rows(engine)
    assert mark == END and rows == want
    assert answers(db_path, names) == before


def test_sums_of_the_tier_with_its_bucket_in_progress_equal_raw_sums(fed):
    engine, _ = fed
    rollup.catch_up(engine, END - 300)
    with engine.connect() as conn:
        tier = [0, 0]
        for t in (QUARTER.table, in_progress(QUARTER).table):  # final buckets, the one in progress
            row = conn.execute(select(func.sum(t.c.bytes_received), func.sum(t.c.samples))).one()
            tier = [tier[0] + row[0], tier[1] + row[1]]
        raw = [s for s in packed.raw_samples(conn) if s[1] < END - 300]
        assert tier == [sum(s[2] for s in raw), len(raw)]
        assert conn.execute(select(func.count()).select_from(schema.usage_packed)).scalar() == 0


def test_copy_to_has_the_target_sum_its_bucket_in_progress_afresh(fed, db_path, tmp_path):
    from ovpnmon_collector import copy

    engine, _ = fed
    rollup.catch_up(engine, END - 400)
    target = str(tmp_path / "target.db")
    into = engines.writer_engine(target)
    migrations.init_db(into)
    own = Dataset(clients=3, start=END - 3600, end=END, interval=30, seed=9)
    feed(own, into, str(tmp_path / "target-status.log"))
    rollup.catch_up(into, END - 100)  # the target's own bucket in progress, summed

    def received(path: str) -> int:
        """Every client's bytes received in the last 24 hours, as the top clients count them."""
        app = create_app(Config(database=path), clock=lambda: float(END))
        body = falcon.testing.TestClient(app).simulate_get("/api/v1/analytics?range=24h").json
        top = body["data"]["top_clients_24h"]
        assert len(top) < 10  # every client
        return sum(entry["total_rx"] for entry in top)

    theirs, ours = received(target), received(db_path)
    assert copy.copy(engine, into, host="copied").equal
    with into.connect() as there:
        assert meta.get(there, OPEN) is None  # the copied samples before it are not in its sums
    into.dispose()
    assert received(target) == theirs + ours > theirs > 0


def test_buckets_closed_from_their_open_sums_equal_buckets_rebuilt(db_path, tmp_path):
    """As the daemon runs: a rollup every minute of polls, so every bucket is summed while in
    progress and closed by adding its last samples; rebuilding every bucket from raw samples
    (a backfill) then changes no row of any tier."""
    dataset = Dataset(clients=6, start=END - 3 * 3600, end=END, interval=20, seed=11)
    engine = engines.writer_engine(db_path)
    migrations.init_db(engine)
    minutes = [dataset.start // 60]

    def each(now, _rows):
        if now // 60 != minutes[-1]:
            minutes.append(now // 60)
            rollup.catch_up(engine, now)

    feed(dataset, engine, str(tmp_path / "status.log"), each)
    assert len(minutes) > 150

    def tiers() -> dict[str, list]:
        with engine.connect() as conn:
            return {
                t.name: conn.execute(select(t.table).order_by(*t.table.primary_key)).all()
                for t in (*rollup.ROLLUPS, *OPEN_TIERS.values())
            }

    with engine.connect() as conn:
        assert meta.get(conn, OPEN) is not None
    incremental = tiers()
    assert len(incremental["quarter_hour"]) > 50
    rollup.backfill(engine, dataset.start, END)
    assert tiers() == incremental
    engine.dispose()


# The daily tier's day in progress: the sums of its final 15-minute buckets, up to the 15-minute
# watermark (its open mark), summed as each closes.
DAILY = BY_NAME["daily"]
DAY_OPEN = meta.open_key(DAILY.name)
DEC_4 = 1_796_342_400  # 2026-12-04 00:00 UTC: a month three days old
NOW_4 = DEC_4 + 10 * 3600 + 450  # 10:07:30, in a 15-minute bucket


def _day_rows(engine, day: int) -> tuple[int | None, dict, dict]:
    """``summed_rows`` of the daily tier's ``day``."""
    return summed_rows(engine, DAILY, day)


def _month_answers(db_path, names) -> dict[str, bytes]:
    """Answers that read the day in progress, whole or in part, and its month's row."""
    app = create_app(Config(database=db_path), clock=lambda: float(NOW_4))
    client = falcon.testing.TestClient(app)
    urls = [
        "/api/v1/usage?period=2026-12",
        "/api/v1/usage?period=2026-12-04",
        "/api/v1/usage?from=2026-12-01&to=2026-12-04T05:00Z",  # the month less most of today
        "/api/v1/usage?from=2026-12-01&to=2026-12-04T10:00Z",  # up to the day's mark
        "/api/v1/usage?from=2026-12-02T03:00Z&to=2026-12-04T10:05Z",
        "/api/v1/analytics?range=24h",
        "/api/v1/analytics?range=7d",
        f"/api/v1/usage?period=2026-12&common_name={names[0]}",
        f"/api/v1/stats/{names[0]}?range=7d",
    ]
    found = {}
    for url in urls:
        response = client.simulate_get(url)
        assert response.status_code == 200, (url, response.text)
        found[url] = response.content
    return found


def test_the_daemon_sums_the_bucket_in_progress_after_every_poll(db_path, tmp_path):
    """The daemon's maintenance after each poll (``Maintenance``, ``rollup.sum_recent``) sums
    the 15-minute bucket in progress up to the poll's second, in the bucket's own table: its
    rows equal the raw sums before the mark after every poll (the first poll of a bucket has
    the rollups close the one before first), a range ending then reads no raw sample, and
    every answer is what raw samples alone give."""
    dataset = Dataset(clients=6, start=END - 2 * 3600, end=END, interval=20, seed=12)
    engine = engines.writer_engine(db_path)
    migrations.init_db(engine)
    clock = ManualClock(float(dataset.start), 0.0)
    work = daemon.Maintenance(engine, clock, dataset.interval)
    summed, waited = [], []
    first_end = align(dataset.start, BUCKET) + BUCKET  # the end of the first bucket

    def each(now, _rows):
        clock.set(float(now))
        work.run()
        mark, rows, want = summed_rows(engine, QUARTER, align(now, BUCKET))
        with engine.connect() as conn:
            status = meta.read_status(conn)
        if mark == now + 1:
            assert rows == want, now
            parts = series.pieces(status, align(now, BUCKET) - 3600, now + 1)
            assert parts[-1][0] is in_progress(QUARTER) and not [p for p in parts if p[0].raw]
            summed.append(now)
        else:  # only in the first bucket, with none closed before it: raw samples
            assert QUARTER.name not in status.watermarks and now < first_end
            waited.append(now)

    feed(dataset, engine, str(tmp_path / "status.log"), each)
    assert len(summed) > 300 and waited
    names = [person.name for person in dataset.people]
    with_sums = answers(db_path, names)
    with engine.begin() as conn:  # no mark: raw samples alone
        meta.delete(conn, [OPEN])
    assert answers(db_path, names) == with_sums
    engine.dispose()


def test_upgrade_to_10_moves_the_bucket_in_progress_into_its_own_table(fed, db_path):
    """9 -> 10: the rows of the bucket in progress move from ``stats_15min`` into
    ``stats_15min_open``, and every answer stays what it was."""
    engine, names = fed
    rollup.catch_up(engine, END - 400)
    before = answers(db_path, names)
    opened, q = in_progress(QUARTER).table, QUARTER.table
    with engine.begin() as conn:  # as schema 9 kept them: in stats_15min
        rows = conn.execute(select(opened).order_by(opened.c.client_id)).all()
        conn.execute(q.insert(), [row._asdict() for row in rows])
        opened.drop(conn)
        meta.put(conn, meta.SCHEMA_VERSION, "9")
    assert len(rows) > 4
    assert migrations.init_db(engine) == (9, schema.SCHEMA_VERSION)
    with engine.connect() as conn:
        assert conn.execute(select(opened).order_by(opened.c.client_id)).all() == rows
        left = select(func.count()).select_from(q).where(q.c.bucket >= align(END, BUCKET))
        assert conn.execute(left).scalar() == 0
    assert answers(db_path, names) == before


@pytest.fixture
def month_fed(db_path, tmp_path):
    """5 clients polled every 10 minutes from 1 December to NOW_4, nothing rolled up yet."""
    dataset = Dataset(clients=5, start=DEC_4 - 3 * DAY, end=NOW_4, interval=600, seed=7)
    engine = engines.writer_engine(db_path)
    migrations.init_db(engine)
    feed(dataset, engine, str(tmp_path / "status.log"))
    yield engine, [person.name for person in dataset.people]
    engine.dispose()


def test_the_day_in_progress_is_summed_from_its_final_quarter_hours(month_fed, db_path):
    """The rollup sums today's final 15-minute buckets into today's daily row, up to the
    15-minute watermark; readers take today from that row (and the month's, which holds it
    too), and every answer is what they give without it, a range ending today before the
    mark included."""
    engine, names = month_fed
    rollup.catch_up(engine, NOW_4 - 300)  # 40 quarter-hours final today: 16 a run
    mark, rows, want = _day_rows(engine, DEC_4)
    assert mark == DEC_4 + 16 * BUCKET and want and rows == want
    rollup.catch_up(engine, NOW_4 - 300)
    rollup.catch_up(engine, NOW_4 - 300)
    mark, rows, want = _day_rows(engine, DEC_4)
    assert mark == align(NOW_4 - 300, BUCKET) and want and rows == want
    with engine.connect() as conn:
        status = meta.read_status(conn)
    assert status.watermarks[DAILY.name] == DEC_4
    assert (DAILY, DEC_4, DEC_4 + DAY) in series.pieces(status, NOW_4 - DAY, NOW_4)
    summed = _month_answers(db_path, names)
    # the answers compared do read that row: a byte more in it shows
    with engine.begin() as conn:
        t = DAILY.table
        conn.execute(t.update().where(t.c.bucket == DEC_4).values(bytes_sent=t.c.bytes_sent + 1))
    assert _month_answers(db_path, names) != summed
    with engine.begin() as conn:  # neither the row nor the mark: today from finer tiers
        conn.execute(DAILY.table.delete().where(DAILY.table.c.bucket == DEC_4))
        meta.delete(conn, [DAY_OPEN])
    assert _month_answers(db_path, names) == summed

    for _ in range(3):  # summed afresh, from the start of the day
        rollup.catch_up(engine, NOW_4 - 300)
    assert _day_rows(engine, DEC_4)[1:] == (want, want)
    rollup.backfill(engine, DEC_4 - 3 * DAY, NOW_4)  # re-sums it from the same buckets
    for _ in range(3):
        rollup.catch_up(engine, NOW_4 - 300)
    assert _day_rows(engine, DEC_4)[1] == want and _month_answers(db_path, names) == summed


def test_the_day_in_progress_as_the_daemon_runs_closes_into_the_day_rebuilt(db_path, tmp_path):
    """A rollup every 10 minutes of polls across midnight: the day is summed as its quarter-
    hours close, then closed by a rebuild from its six-hour buckets (adding its samples after
    the mark, as the 15-minute tier closes, would lose its last quarter-hour); the day's row
    equals its raw sums at every step, and a backfill of everything changes no row."""
    start = DEC_4 - 8 * 3600
    dataset = Dataset(clients=4, start=start, end=NOW_4, interval=120, seed=13)
    engine = engines.writer_engine(db_path)
    migrations.init_db(engine)
    with engine.begin() as conn:  # the days before are final: the 3rd is the day in progress
        meta.put(conn, meta.watermark_key(DAILY.name), str(DEC_4 - DAY))
    seen = []

    def each(now, _rows):
        if now // 600 != (now - dataset.interval) // 600:
            rollup.catch_up(engine, now)
            mark, rows, want = _day_rows(engine, align(now, DAY))
            if mark is not None and align(mark - 1, DAY) == align(now, DAY):
                assert rows == want, now
                seen.append(now)

    feed(dataset, engine, str(tmp_path / "status.log"), each)
    assert min(seen) < DEC_4 < max(seen) and len(seen) > 60  # both days summed in progress
    with engine.connect() as conn:
        t, s6 = DAILY.table, BY_NAME["six_hour"].table
        closed = conn.execute(select(func.sum(t.c.bytes_received)).where(t.c.bucket < DEC_4))
        six = conn.execute(select(func.sum(s6.c.bytes_received)).where(s6.c.bucket < DEC_4))
        assert closed.scalar() == six.scalar() > 0

    def tiers() -> dict[str, list]:
        with engine.connect() as conn:
            return {
                t.name: conn.execute(select(t.table).order_by(*t.table.primary_key)).all()
                for t in (*rollup.ROLLUPS, *OPEN_TIERS.values())
            }

    before = tiers()
    rollup.backfill(engine, start, NOW_4)
    assert tiers() == before
    engine.dispose()


def test_copy_to_drops_a_day_in_progress_summed_to_another_mark(month_fed, tmp_path):
    """A target whose day in progress is summed to another mark loses the mark and the day's
    rows with it (its month's row would still count them), and its next rollup sums the day
    afresh, the copied clients' included."""
    from ovpnmon_collector import copy

    engine, _ = month_fed
    rollup.catch_up(engine, NOW_4 - 300)
    into = engines.writer_engine(str(tmp_path / "target.db"))
    migrations.init_db(into)
    with into.begin() as conn:  # the target's days before the 4th are final
        meta.put(conn, meta.watermark_key(DAILY.name), str(DEC_4))
    own = Dataset(clients=2, start=DEC_4, end=NOW_4, interval=300, seed=3, first=50)
    feed(own, into, str(tmp_path / "target-status.log"))
    for _ in range(3):  # summed to an earlier quarter-hour than the source's
        rollup.catch_up(into, NOW_4 - 1500)
    assert _day_rows(into, DEC_4)[0] == align(NOW_4 - 1500, BUCKET)
    assert copy.copy(engine, into, host="copied").equal
    mark, rows, _ = _day_rows(into, DEC_4)
    assert mark is None and rows == {}
    for _ in range(3):
        rollup.catch_up(into, NOW_4 - 300)
    mark, rows, want = _day_rows(into, DEC_4)
    assert mark == align(NOW_4 - 300, BUCKET) and len(rows) > 2 and rows == want  # both hosts
    into.dispose()
