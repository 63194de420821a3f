"""The outage spool: polls the database could not take are kept on disk and written, in order
and each with its own time, when it is back; the history is then the one an outage-free run
stores, to the byte. The outage here is a lock another connection holds on the database (with a
short lock timeout), on both engines; tests/test_postgres.py stops a real server."""

from __future__ import annotations

import gzip
import os

import pytest
from conftest import FakeClock, row
from sqlalchemy import select

from ovpnmon_collector.collector import Collector
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.spool import Spool, SpooledPoll
from ovpnmon_collector.store import Store
from ovpnmon_common import schema
from ovpnmon_common.storage.engines import writer_engine
from ovpnmon_common.storage.location import is_postgres
from ovpnmon_common.storage.migrations import init_db
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import render_status

T0 = 1_795_717_500
SINCE = T0 - 100


def sessions_at(n: int) -> list:
    """What OpenVPN shows at poll ``n``: alice all along, bob until poll 40, carol from 50 to
    80, dave from 100 (polls 10 to 109 are the outage)."""
    rows = [row("alice", 1, SINCE, 1000 * n, 10 * n)]
    if n < 40:
        rows.append(row("bob", 2, SINCE, 50 * n, 5 * n))
    if 50 <= n < 80:
        rows.append(row("carol", 3, T0 + 495, 70 * (n - 49), 7 * (n - 49)))
    if n >= 100:
        rows.append(row("dave", 4, T0 + 995, 30 * (n - 99), 3 * (n - 99)))
    return rows


class Blocker:
    """Another connection holding every table a poll writes: polls fail after the writer's lock
    timeout, as while the database is away."""

    def __init__(self, database: str) -> None:
        self.database = database
        self.conn = None

    def hold(self) -> None:
        if is_postgres(self.database):
            import psycopg

            url = self.database.replace("postgresql+psycopg://", "postgresql://")
            self.conn = psycopg.connect(url)
            self.conn.execute("LOCK TABLE hosts, clients, sessions IN ACCESS EXCLUSIVE MODE")
        else:
            import sqlite3

            self.conn = sqlite3.connect(self.database, isolation_level=None)
            self.conn.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        self.conn.rollback()
        self.conn.close()


def run(
    database: str,
    tmp_path,
    polls: int,
    outage: range = range(0),
    restart_at: int = -1,
    down=None,
    up=None,
):
    """Poll ``polls`` times, 10 s apart, through an outage of the polls in ``outage`` (by
    ``down()`` before its first and ``up()`` after its last; by default a ``Blocker``), and a
    collector restart at poll ``restart_at``; returns the spool."""
    engine = writer_engine(database, busy_timeout_ms=50)
    init_db(engine)
    tmp_path.mkdir(parents=True, exist_ok=True)
    status = tmp_path / f"status-{len(outage)}.log"
    spool = Spool(str(tmp_path / f"spool-{len(outage)}"), 1 << 30)
    clock = FakeClock(T0)

    def collector() -> Collector:
        source = StatusFileSource("udp", str(status), settle=0)
        return Collector(Store(engine, "vpn1"), [source], interval=10, clock=clock, spool=spool)

    current = collector()
    if down is None:
        blocker = Blocker(database)
        down, up = blocker.hold, blocker.release
    for n in range(polls):
        if outage and n == outage.start:
            down()
        if n == restart_at:  # a new process: nothing in memory, the spool on disk
            current = collector()
        status.write_text(render_status(sessions_at(n), int(clock.wall)))
        summary = current.poll()
        if n in outage:
            assert not summary.stored and summary.spooled == n - outage.start + 1, summary
            assert "kept in the spool" in summary.error
        else:
            assert summary.stored, summary
        if outage and n == outage.stop - 1:
            up()
        clock.advance(10)
    engine.dispose()
    return spool


def history(database: str) -> dict:
    engine = writer_engine(database)
    c, s, u, g = schema.clients, schema.sessions, schema.usage_history, schema.global_history
    with engine.connect() as conn:
        names = dict(conn.execute(select(c.c.id, c.c.common_name)).all())
        found = {
            "totals": lifetime_totals(conn),
            "samples": sorted(
                (names[cid], ts, rx, tx) for cid, ts, rx, tx in conn.execute(select(u)).all()
            ),
            "server": sorted(
                tuple(r)
                for r in conn.execute(
                    select(g.c.ts, g.c.bytes_received, g.c.bytes_sent, g.c.active_count)
                )
            ),
            "sessions": sorted(
                (names[r.client_id], r.connected_since, r.first_seen, r.disconnected_at)
                for r in conn.execute(select(s))
            ),
        }
    engine.dispose()
    return found


@pytest.fixture
def reference(tmp_path_factory):
    """The same 130 polls on a database that never went away."""
    path = str(tmp_path_factory.mktemp("reference") / "ovpnmon.db")
    run(path, tmp_path_factory.mktemp("ref"), 130)
    return history(path)


def test_an_outage_of_1000_seconds_leaves_the_history_an_outage_free_run_stores(
    db_path, tmp_path, reference
):
    """100 polls (1,000 s) spooled, one collector restart among them, then written in order:
    the same raw samples, sessions and totals as the run without an outage; bob's and carol's
    sessions, which closed during it, to the byte."""
    spool = run(db_path, tmp_path, 130, outage=range(10, 110), restart_at=60)
    assert len(spool) == 0  # all written
    assert history(db_path) == reference
    assert reference["totals"]["carol"] == (70 * 30, 7 * 30, False)


def test_without_a_spool_the_sessions_still_open_are_caught_up(db_path, tmp_path):
    """The behaviour the spool improves on, kept when it is off (spool_mb = 0): bytes of
    sessions still open arrive with the first poll after the outage; what closed meanwhile is
    counted up to the last stored poll."""
    engine = writer_engine(db_path, busy_timeout_ms=50)
    init_db(engine)
    status, clock = tmp_path / "status.log", FakeClock(T0)
    source = StatusFileSource("udp", str(status), settle=0)
    collector = Collector(Store(engine, "vpn1"), [source], interval=10, clock=clock)
    blocker = Blocker(db_path)
    for n in range(130):
        if n == 10:
            blocker.hold()
        status.write_text(render_status(sessions_at(n), int(clock.wall)))
        summary = collector.poll()
        assert summary.stored == (n not in range(10, 110)) and summary.spooled == 0
        if n == 109:
            blocker.release()
        clock.advance(10)
    with engine.connect() as conn:
        totals = lifetime_totals(conn)
    engine.dispose()
    assert totals["alice"] == (1000 * 129, 10 * 129, True)
    assert totals["bob"] == (50 * 9, 5 * 9, False)  # closed during the outage: lost after poll 9
    assert "carol" not in totals  # opened and closed during it: never seen


def test_the_spool_keeps_whole_files_survives_a_new_instance_and_stays_bounded(tmp_path):
    directory = str(tmp_path / "spool")
    spool = Spool(directory, 10 * 1024 * 1024)
    for n in range(5):
        spool.add(SpooledPoll(T0 + 10 * n, 10.0, {"udp": f"text {n}"}, {"tcp": "refused"}))
    again = Spool(directory, 10 * 1024 * 1024)  # after a restart
    kept = [again.load(name) for name in again.names()]
    assert [p.ts for p in kept] == [T0 + 10 * n for n in range(5)]
    assert kept[2] == SpooledPoll(T0 + 20, 10.0, {"udp": "text 2"}, {"tcp": "refused"})
    assert not [n for n in os.listdir(directory) if n.startswith(".")]  # no partial file left

    # bounded: over the bound, every other poll between the first and the newest goes
    big = os.urandom(40_000).hex()  # does not compress
    small = Spool(str(tmp_path / "small"), 400_000)
    for n in range(9):
        small.add(SpooledPoll(T0 + 10 * n, 10.0, {"udp": big}, {}))
    kept_ts = [small.load(name).ts for name in small.names()]
    assert small.size() <= 400_000
    assert kept_ts[0] == T0 and kept_ts[-1] == T0 + 80 and len(kept_ts) < 9

    # a file that cannot be read is set aside, not retried forever
    name = again.names()[0]
    with open(os.path.join(directory, name), "wb") as broken:
        broken.write(gzip.compress(b"{not json"))
    assert again.load(name) is None
    assert name not in again.names() and os.path.exists(os.path.join(directory, name + ".bad"))
