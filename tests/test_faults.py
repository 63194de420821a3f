"""Faults that need the real thing: a full disk (a size-limited tmpfs, mounted as root)."""

import contextlib
import os
import shutil
import subprocess
import tempfile

import pytest
from conftest import FakeClock, needs_root

from ovpnmon_collector.collector import Collector
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.store import Store
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import render_status

T0 = 1_795_717_500
CLIENTS = 400


@pytest.fixture
def small_disk():
    where = tempfile.mkdtemp(prefix="ovpnmon-full-")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", where], capture_output=True
    )
    if mounted.returncode != 0:
        shutil.rmtree(where, ignore_errors=True)
        pytest.fail(f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    yield where
    subprocess.run(["umount", "-l", where], check=False)
    shutil.rmtree(where, ignore_errors=True)


def fill(path):
    """Take every free byte of the filesystem holding ``path``."""
    with open(path, "wb", buffering=0) as handle, contextlib.suppress(OSError):
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()


def sessions(step):
    return [
        SessionRow(
            f"client-{i:03d}",
            f"127.0.0.1:{40000 + i}",
            "",
            "",
            1000 * step + i,
            500 * step,
            T0 + 1,
            i,
        )
        for i in range(CLIENTS)
    ]


@pytest.mark.root
@needs_root
def test_full_disk_is_logged_survived_and_recovered(small_disk, tmp_path):
    status = tmp_path / "status.log"  # on the big disk: only the database is short of space
    engine = engines.writer_engine(os.path.join(small_disk, "ovpnmon.db"))
    migrations.init_db(engine)
    clock = FakeClock(T0)
    collector = Collector(
        Store(engine), [StatusFileSource("udp", str(status), settle=0)], clock=clock
    )
    status.write_text(render_status(sessions(1), T0))
    assert collector.poll().stored
    fill(os.path.join(small_disk, "filler"))

    failures = []
    for step in range(2, 40):
        clock.advance(10)
        status.write_text(render_status(sessions(step), int(clock.wall)))
        summary = collector.poll()
        if not summary.stored:
            failures.append(summary.error)
        if len(failures) >= 3:
            break
    assert failures, "the disk never filled up"
    assert all(
        f == "database write failed, will retry next poll: database or disk is full"
        for f in failures
    )

    os.unlink(os.path.join(small_disk, "filler"))  # space comes back
    clock.advance(10)
    status.write_text(render_status(sessions(step + 1), int(clock.wall)))
    summary = collector.poll()
    assert summary.stored, summary
    with engine.connect() as conn:
        totals = lifetime_totals(conn)
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    # every byte OpenVPN reported is stored exactly once: nothing lost while the disk was full
    assert totals["client-007"][:2] == (1000 * (step + 1) + 7, 500 * (step + 1))
    assert len(totals) == CLIENTS
    collector.close()
