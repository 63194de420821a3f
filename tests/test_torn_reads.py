"""A snapshot is recorded only if it is exactly one of the writer's writes (issue 12, item 1).

The writer stops in the middle of a rewrite (for less than the settle time) and the collector polls
right then: the file holds new lines followed by the old tail, which still ends with the old END.
Every rewrite pattern, every status version, and a second source beside it that must never be
held up by the first.
"""

from __future__ import annotations

import threading

import pytest
from conftest import FakeClock
from sqlalchemy import func, select
from status_writers import InPlaceWriter, RenameWriter, TruncateFirstWriter

from ovpnmon_collector.collector import Collector
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.store import Store
from ovpnmon_common import schema
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import render_status

T0 = 1_795_717_500
SESSIONS = 40


def version(k: int, status_version: int) -> str:
    # every version one digit longer than the one before: a torn read's seam is mid-line
    rows = [
        SessionRow(
            f"client-{i:02d}",
            f"127.0.0.1:{40000 + i}",
            f"10.8.0.{i + 2}",
            "",
            10 ** (k + 4) + i,
            10 ** (k + 3),
            T0 + 1,
            i,
        )
        for i in range(SESSIONS)
    ]
    return render_status(rows, T0 + k, status_version)


@pytest.mark.parametrize("writer_class", [InPlaceWriter, TruncateFirstWriter, RenameWriter])
@pytest.mark.parametrize("status_version", [1, 2, 3])
def test_a_torn_rewrite_is_never_recorded(tmp_path, writer_class, status_version):
    path = tmp_path / "udp.log"
    other = tmp_path / "tcp.log"
    other.write_text(
        render_status([SessionRow("bystander", "127.0.0.2:1", "", "", 5, 5, T0 + 1, 0)], T0)
    )
    writer = writer_class(str(path))
    writer.write(version(0, status_version))
    engine = engines.writer_engine(str(tmp_path / "x.db"))
    migrations.init_db(engine)
    clock = FakeClock(T0)
    sources = [StatusFileSource("udp", str(path)), StatusFileSource("tcp", str(other))]
    collector = Collector(Store(engine), sources, clock=clock)
    summaries = [collector.poll()]
    for k in (1, 2, 3):
        clock.advance(10)
        writer.stalled.clear()
        rewrite = threading.Thread(
            target=writer.write, args=(version(k, status_version), SESSIONS // 2 + 3, 0.1)
        )
        rewrite.start()
        assert writer.stalled.wait(10)
        summaries.append(collector.poll())  # the file is torn right now
        rewrite.join()
    clock.advance(10)
    summaries.append(collector.poll())
    writer.close()

    assert [(s.stored, s.failed) for s in summaries] == [(True, {})] * 5
    with engine.connect() as conn:
        totals = lifetime_totals(conn)
        sessions = conn.execute(select(func.count()).select_from(schema.sessions)).scalar()
        closed = conn.execute(
            select(func.count())
            .select_from(schema.sessions)
            .where(schema.sessions.c.disconnected_at.is_not(None))
        ).scalar()
    engine.dispose()
    assert (sessions, closed) == (SESSIONS + 1, 0)  # nobody was closed and reopened
    expected = {f"client-{i:02d}": (10**7 + i, 10**6, True) for i in range(SESSIONS)}
    assert totals == {**expected, "bystander": (5, 5, True)}


@pytest.mark.parametrize("status_version", [1, 3])
def test_a_writer_held_up_longer_than_the_settle_time_after_truncating_is_waited_for(
    tmp_path, status_version
):
    """Empty or without END, a file is no whole status however long it stood still: the reader
    waits for its writer (here 0.6 s, the settle time is 0.25 s) instead of reporting it."""
    path = tmp_path / "udp.log"
    writer = TruncateFirstWriter(str(path))
    writer.write(version(0, status_version))
    engine = engines.writer_engine(str(tmp_path / "x.db"))
    migrations.init_db(engine)
    clock = FakeClock(T0)
    collector = Collector(Store(engine), [StatusFileSource("udp", str(path))], clock=clock)
    assert collector.poll().stored
    for k, stall_after in ((1, 0), (2, SESSIONS // 2)):  # empty; half written, no END yet
        clock.advance(10)
        writer.stalled.clear()
        rewrite = threading.Thread(
            target=writer.write, args=(version(k, status_version), stall_after, 0.6)
        )
        rewrite.start()
        assert writer.stalled.wait(10)
        summary = collector.poll()
        rewrite.join()
        assert (summary.stored, summary.failed, summary.pending) == (True, {}, []), summary
    with engine.connect() as conn:
        totals = lifetime_totals(conn)
    engine.dispose()
    assert totals["client-00"] == (10**6, 10**5, True)
