"""Raw samples of final buckets, packed (``ovpnmon_common.packed``, ``ovpnmon_collector.pack``):
the format, the pass that moves rows into it, and every answer the API gives the same before
and after, on both engines."""

from __future__ import annotations

import json

import falcon.testing
import pytest
from conftest import TickingClock, raw_reading_answers
from sqlalchemy import func, select

from ovpnmon_api.app import create_app
from ovpnmon_collector import pack, rollup
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.buckets import align
from ovpnmon_common.config import Config
from ovpnmon_common.storage import engines, migrations
from ovpnmon_demo.world import BUCKET, Dataset, feed

END = 1_795_717_500 // BUCKET * BUCKET + BUCKET // 2  # in the middle of a bucket, as a "now"


def test_samples_round_trip_with_64_bit_counters_and_uneven_polls():
    bucket = 1_795_716_000
    samples = [(bucket, 0, 2**63 - 1), (bucket + 7, 2**40 + 3, 0), (bucket + 7, 5, 6)]
    samples += [(bucket + 10 * i, i * 1000, 3 * i) for i in range(2, 89)]
    value = packed.pack(bucket, samples)
    assert packed.unpack(bucket, value) == samples
    assert packed.unpack(bucket, packed.pack(bucket, [])) == []
    # a window's sums: samples at its start count, at its end do not
    for start, end in ((bucket, bucket + 900), (bucket + 7, bucket + 30), (bucket + 8, bucket + 9)):
        inside = [s for s in samples if start <= s[0] < end]
        want = (sum(s[1] for s in inside), sum(s[2] for s in inside))
        assert packed.window_sums(bucket, value, start, end) == want


def test_a_clients_quarter_hour_at_10_s_packs_to_a_few_bytes_a_counter_value():
    bucket = 1_795_716_000
    samples = [(bucket + 10 * i + 3, 1200 + (i * 7919) % 50_000, 300 + i % 17) for i in range(90)]
    value = packed.pack(bucket, samples)
    # as rows: about 21 bytes a sample (two counter values) in usage_history
    assert len(value) / (2 * len(samples)) < 3.5


def test_malformed_packed_samples_are_refused_with_a_message():
    with pytest.raises(ValueError, match="unknown format"):
        packed.unpack(0, b"\x07abc")
    with pytest.raises(ValueError, match="unknown format"):
        packed.unpack(0, b"")
    with pytest.raises(ValueError, match="not three whole columns"):
        import zlib

        packed.unpack(0, b"\x01" + zlib.compress(b"\0" * 25))
    with pytest.raises(ValueError, match="out of order"):
        packed.pack(100, [(110, 1, 1), (105, 1, 1)])
    with pytest.raises(ValueError, match="before the bucket"):
        packed.pack(100, [(99, 1, 1)])


@pytest.fixture
def fed(db_path, tmp_path):
    """Eight hours of 10 clients polled every 30 s (a restart, reconnects), the tiers rolled up
    but nothing packed yet: (engine, API client with the clock at the end, client names)."""
    dataset = Dataset(clients=10, start=END - 8 * 3600, end=END, interval=30, seed=3)
    engine = engines.writer_engine(db_path)
    migrations.init_db(engine)
    feed(dataset, engine, str(tmp_path / "status.log"))
    rollup.catch_up(engine, END)  # the rollups alone: packing is the daemon's next step
    app = create_app(Config(database=db_path), clock=lambda: float(END))
    yield engine, falcon.testing.TestClient(app), [person.name for person in dataset.people]
    engine.dispose()


def answers(client, names) -> dict[str, bytes]:
    return raw_reading_answers(client, names, END)


def recorded(engine, client, names) -> tuple[list, dict[str, bytes]]:
    """(every raw sample, every answer that reads them), to compare after packing."""
    with engine.connect() as conn:
        return packed.raw_samples(conn), answers(client, names)


def test_packing_keeps_every_sample_and_every_answer(fed):
    engine, client, names = fed
    samples, before = recorded(engine, client, names)
    # the answers compared hold bytes read from raw samples: the edges' usage, samples as stored
    usage = next(json.loads(body) for url, body in before.items() if "usage?from" in url)
    assert usage["total"]["bytes_total"] > 0
    stored = [
        point["bytes_received"]
        for url, body in before.items()
        if "resolution=raw" in url and body.startswith(b'{"success":true')
        for point in json.loads(body)["data"]["history"]
    ]
    assert len(stored) > 1000 and sum(stored) > 0

    assert pack.catch_up(engine) > 20  # about 30 buckets of final data

    u, p = schema.usage_history, schema.usage_packed
    with engine.connect() as conn:
        assert packed.raw_samples(conn) == samples
        final = meta.watermarks(conn)["quarter_hour"]
        heartbeat = conn.execute(select(schema.hosts.c.heartbeat)).scalar()
        left = conn.execute(select(u.c.ts).where(u.c.ts < final).distinct()).scalars().all()
        assert left == [] or left == [heartbeat]  # only the current rate's samples stay rows
        assert conn.execute(select(func.max(p.c.bucket))).scalar() < final
        for bucket, _, rx, tx, count, data in conn.execute(select(p)):
            unpacked = packed.unpack(bucket, data)
            assert (rx, tx, count) == (
                sum(s[1] for s in unpacked),
                sum(s[2] for s in unpacked),
                len(unpacked),
            )
            assert all(bucket <= s[0] < bucket + BUCKET for s in unpacked)
    assert answers(client, names) == before
    assert pack.catch_up(engine) == 0  # nothing left to pack


def test_a_backfill_of_the_quarter_hours_reads_packed_samples(fed):
    engine, _, _ = fed
    t = schema.stats_15min
    with engine.connect() as conn:
        built = conn.execute(select(t).order_by(t.c.client_id, t.c.bucket)).all()
    pack.catch_up(engine)
    rollup.backfill(engine, END - 8 * 3600, END, ["quarter_hour"])
    with engine.connect() as conn:
        assert conn.execute(select(t).order_by(t.c.client_id, t.c.bucket)).all() == built


def test_a_late_poll_into_a_packed_bucket_stays_a_row_and_counts(fed):
    engine, _, _ = fed
    pack.catch_up(engine)
    u = schema.usage_history
    with engine.connect() as conn:
        bucket, client_id = conn.execute(
            select(schema.usage_packed.c.bucket, schema.usage_packed.c.client_id).limit(1)
        ).one()
        before = sorted(packed.raw_samples(conn))
    with engine.begin() as conn:  # as a poll late by hours would add it (rollup.fold_in)
        conn.execute(
            u.insert().values(client_id=client_id, ts=bucket + 1, bytes_received=5, bytes_sent=7)
        )
    assert pack.catch_up(engine) == 0  # behind the newest packed bucket: left as it is
    with engine.connect() as conn:
        after = packed.raw_samples(conn)
    assert sorted(after) == sorted([*before, (client_id, bucket + 1, 5, 7)])


def test_a_cursor_set_back_merges_into_packed_buckets_and_loses_nothing(fed):
    engine, _, _ = fed
    pack.catch_up(engine)
    g, u = schema.global_history, schema.usage_history
    with engine.connect() as conn:
        before = packed.raw_samples(conn)
        bucket = conn.execute(select(func.min(schema.usage_packed.c.bucket))).scalar()
        ids = conn.execute(select(schema.clients.c.id)).scalars().all()
        polls = conn.execute(select(g.c.ts).where(g.c.ts >= bucket, g.c.ts < bucket + BUCKET))
        # a client without a sample at one of the bucket's polls: a late row can land there
        held = {(cid, ts) for cid, ts, _, _ in before}
        client_id, ts = next((c, t) for t in polls.scalars() for c in ids if (c, t) not in held)
    with engine.begin() as conn:  # the late row, then packing told to go over its bucket again
        conn.execute(u.insert().values(client_id=client_id, ts=ts, bytes_received=5, bytes_sent=7))
        meta.put(conn, pack.CURSOR, f"{bucket} 0")
    pack.catch_up(engine)
    with engine.connect() as conn:
        assert packed.raw_samples(conn) == sorted([*before, (client_id, ts, 5, 7)])
        assert conn.execute(select(u).where(u.c.ts == ts)).first() is None  # packed, merged


def test_a_pass_stopped_by_its_deadline_mid_bucket_goes_on_where_it_stopped(fed):
    engine, client, names = fed
    samples, before = recorded(engine, client, names)
    clock = TickingClock(END, 0.0)
    # slices of 1 client id at first: the first bucket takes several transactions
    assert pack.catch_up(engine, deadline=3.5, clock=clock, width=1) == 0
    with engine.connect() as conn:
        bucket, after = map(int, meta.get(conn, pack.CURSOR).split())
        assert bucket == align(min(ts for _, ts, _, _ in samples), BUCKET)
        assert 0 < after < 10  # inside the first bucket, between two slices of its clients
        assert packed.raw_samples(conn) == samples
    assert answers(client, names) == before  # half a bucket packed: the same answers
    assert pack.catch_up(engine, width=1) > 20
    with engine.connect() as conn:
        assert packed.raw_samples(conn) == samples
        final = meta.watermarks(conn)["quarter_hour"]
        u = schema.usage_history
        assert len(conn.execute(select(u.c.ts).where(u.c.ts < final).distinct()).all()) <= 1
    assert answers(client, names) == before


def test_copy_to_carries_the_packed_samples_and_where_packing_goes_on(fed, tmp_path):
    from ovpnmon_collector import copy

    engine, client, names = fed
    pack.catch_up(engine)
    before = answers(client, names)
    target = str(tmp_path / "copy.db")
    into = engines.writer_engine(target)
    migrations.init_db(into)
    report = copy.copy(engine, into)
    assert report.equal, [t for t in report.tables if not t.equal]
    with engine.connect() as conn, into.connect() as there:
        assert meta.get(there, pack.CURSOR) == meta.get(conn, pack.CURSOR)
        assert packed.raw_samples(there) == packed.raw_samples(conn)
    into.dispose()
    app = create_app(Config(database=target), clock=lambda: float(END))
    assert answers(falcon.testing.TestClient(app), names) == before
