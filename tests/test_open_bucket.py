"""The 15-minute tier's bucket in progress, summed by the rollup up to its open mark
(``ovpnmon_collector.rollup.sum_open``): readers take it from the tier and only the samples after
the mark from raw samples, and every answer stays what raw samples alone give."""

from __future__ import annotations

import falcon.testing
import pytest
from conftest import raw_reading_answers
from sqlalchemy import func, select

from ovpnmon_api.app import create_app
from ovpnmon_api.read import series
from ovpnmon_collector import rollup
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.buckets import DAY, align
from ovpnmon_common.config import Config
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.tiers import BY_NAME
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


def open_rows(engine) -> tuple[int | None, dict[int, tuple[int, int, int]], dict[int, list[int]]]:
    """(the open mark, the tier's rows of the bucket in progress, every client's raw sums before
    the mark in that bucket), both as client id -> [rx, tx, samples]."""
    bucket = align(END, BUCKET)
    t = QUARTER.table
    with engine.connect() as conn:
        mark = meta.get(conn, OPEN)
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
    return int(mark) if mark else None, rows, want


def shifted(engine, by: int) -> int:
    """Add ``by`` bytes received to every row of the bucket in progress; how many rows."""
    t = QUARTER.table
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
    assert mark == END - 400 and want and rows == {k: tuple(v) for k, v in want.items()}
    with engine.connect() as conn:
        status = meta.read_status(conn)
    # the readers' pieces: the tier through the bucket in progress, raw samples after the mark
    parts = series.pieces(status, END - DAY, END)
    assert any(t is QUARTER and end == align(END, BUCKET) + BUCKET for t, _, end in parts)
    assert parts[-1] == (BY_NAME["raw"], END - 400, END)
    summed = answers(db_path, names)
    # the answers compared do read that row: a byte more in it shows
    assert shifted(engine, +1) and answers(db_path, names) != summed
    shifted(engine, -1)

    rollup.catch_up(engine, END - 100)  # the same bucket again: only the samples since added
    mark, rows, want = open_rows(engine)
    assert mark == END - 100 and rows == {k: tuple(v) for k, v in want.items()}
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
    assert mark == END and rows == {k: tuple(v) for k, v in want.items()}
    assert answers(db_path, names) == before


def test_sums_of_the_tier_with_its_bucket_in_progress_equal_raw_sums(fed):
    engine, _ = fed
    rollup.catch_up(engine, END - 300)
    t = QUARTER.table
    with engine.connect() as conn:
        tier = conn.execute(select(func.sum(t.c.bytes_received), func.sum(t.c.samples))).one()
        raw = [s for s in packed.raw_samples(conn) if s[1] < END - 300]
        assert tuple(tier) == (sum(s[2] for s in raw), len(raw))
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
                for t in rollup.ROLLUPS
            }

    with engine.connect() as conn:
        assert meta.get(conn, OPEN) is not None
    incremental = tiers()
    assert len(incremental["quarter_hour"]) > 50
    rollup.backfill(engine, dataset.start, END)
    assert tiers() == incremental
    engine.dispose()
