"""The daemon's schedule and its work between polls (fake clock, real database)."""

import threading

from conftest import FakeClock
from ovpn_harness import Pki
from sqlalchemy import func, select

from ovpnmon_collector import daemon
from ovpnmon_collector.collector import PollSummary
from ovpnmon_collector.simulator import Simulation, populate
from ovpnmon_common import db, schema
from ovpnmon_common.buckets import align
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.tiers import watermark_key

NOW = 1_795_651_200 + 3 * 3600 + 17


def test_next_deadline_is_drift_free_and_skips_missed_slots():
    assert daemon.next_deadline(100.0, 10.0, 103.0) == 110.0  # a 3 s poll does not shift the grid
    assert daemon.next_deadline(100.0, 10.0, 110.0) == 120.0
    assert daemon.next_deadline(100.0, 10.0, 135.5) == 140.0  # an overrun skips, never bursts


def test_run_polls_until_stopped():
    stop = threading.Event()
    polls = []

    class Poller:
        def poll(self):
            polls.append(1)
            if len(polls) == 3:
                stop.set()
            return PollSummary(ts=0, stored=True)

    daemon.run(Poller(), 0.01, stop, monotonic=__import__("time").monotonic)
    assert len(polls) == 3


def test_maintenance_rolls_up_prunes_and_scans(tmp_path):
    engine = db.writer_engine(str(tmp_path / "x.db"))
    db.init_db(engine)
    populate(engine, str(tmp_path / "s.log"), NOW - 6 * 86400, NOW, 3600, Simulation(clients=4))
    pki = Pki.create(tmp_path / "pki")
    crt, _ = pki.issue("alice")
    clock = FakeClock(NOW, 0.0)
    work = daemon.Maintenance(engine, clock, 10, RetentionConfig(raw_days=2), (str(crt),), None)
    work.run()  # rollup and the certificate scan are due at once; retention five minutes later
    with engine.connect() as conn:
        assert int(db.get_meta(conn, watermark_key("hourly"))) == align(NOW, 3600)
        assert conn.execute(select(func.count()).select_from(schema.certificates)).scalar() == 1
        assert (
            conn.execute(select(func.min(schema.global_history.c.ts))).scalar() == NOW - 6 * 86400
        )
    clock.advance(301)
    work.run()
    with engine.connect() as conn:
        oldest = conn.execute(select(func.min(schema.global_history.c.ts))).scalar()
    assert oldest >= align(NOW - 2 * 86400, 86400)
