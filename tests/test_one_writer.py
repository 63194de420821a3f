"""One writer per database (issue 12, item 3): a second collector process beside the daemon is
refused with one line, nothing is counted twice, and a lock left by a killed collector never
blocks a restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import run_collector, stored_totals
from sqlalchemy.exc import OperationalError

from ovpnmon_collector.lock import WriterBusy, WriterLock
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_demo.simulator import render_status

SINCE = int(time.time()) + 30 * 86400  # after the first watch, however late the test runs


def write_status(path: Path, rx: int) -> None:
    rows = [SessionRow("alice", "127.0.0.1:5", "", "", rx, 1, SINCE, 0)]
    path.write_text(render_status(rows, int(time.time())))


def wait_for(predicate, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except OperationalError:  # the file is there, its schema not yet
            pass
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_second_collector_beside_the_daemon_is_refused_and_nothing_doubles(tmp_path):
    status, dbfile = tmp_path / "status.log", tmp_path / "x.db"
    write_status(status, 100)
    config = tmp_path / "c.conf"
    config.write_text(
        f"[database]\npath = {dbfile}\n[collector]\ninterval = 1\n"
        f"[source:udp]\nstatus_file = {status}\n"
    )
    daemon = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_collector", "run", "--config", str(config)],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: dbfile.exists() and stored_totals(dbfile).get("alice", (0,))[0] == 100)
        write_status(status, 200)
        refused = run_collector("poll-once", "--config", str(config))
        assert refused.returncode == 1
        (line,) = refused.stderr.splitlines()
        assert line.startswith(f"Error: another ovpnmon-collector (pid {daemon.pid}, 'run', since ")
        assert line.endswith(
            f"UTC) is writing {dbfile}: two collectors would count every byte twice; "
            "stop the other one first"
        )
        second = run_collector("run", "--config", str(config))
        assert second.returncode == 1 and "two collectors would count" in second.stderr
        for command in (
            ["prune"],
            ["rollup", "--wait", "0.5"],
            ["backfill", "--from", "2026-11-01", "--to", "2026-11-02"],
        ):
            result = run_collector(*command, "--config", str(config))
            assert result.returncode == 1, command
            assert (
                "the daemon rolls up every minute and applies retention hourly by itself; "
                f"stop it first to run '{command[0]}' now" in result.stderr
            ), result.stderr
        wait_for(lambda: stored_totals(dbfile)["alice"][0] == 200)
        time.sleep(2.5)  # more polls of the same counters
        assert stored_totals(dbfile)["alice"][:2] == (200, 1)  # counted once, not 300
    finally:
        daemon.send_signal(signal.SIGKILL)  # as a crash would end it: the lock is left behind
        daemon.wait()
    assert (tmp_path / "x.db.lock").read_text().split()[:2] == [str(daemon.pid), "run"]
    write_status(status, 250)
    restarted = run_collector("poll-once", "--config", str(config))
    assert restarted.returncode == 0, restarted.stderr
    assert stored_totals(dbfile)["alice"][:2] == (250, 1)


def test_a_waiting_command_gets_the_lock_when_the_other_is_done(tmp_path):
    path = str(tmp_path / "x.db")
    first = WriterLock(path, "prune")
    first.acquire()
    with pytest.raises(
        WriterBusy,
        match=r"'prune', since .* UTC\) is writing .*: wait for it to finish or give --wait SECONDS",
    ):
        WriterLock(path, "rollup").acquire()
    threading.Timer(0.3, first.release).start()
    second = WriterLock(path, "rollup")
    second.acquire(wait=10)  # waits, then holds it
    with pytest.raises(WriterBusy, match="'rollup'"):
        WriterLock(path, "backfill").acquire()
    second.release()


def test_a_lock_file_deleted_under_the_daemon_is_taken_again_or_the_daemon_stops(tmp_path):
    path = str(tmp_path / "x.db")
    daemon = WriterLock(path, "run")
    daemon.acquire()
    daemon.ensure()  # nothing changed: nothing to do
    os.unlink(f"{path}.lock")  # a careless clean-up
    daemon.ensure()  # locks a new file at the path
    with pytest.raises(WriterBusy, match="'run'"):
        WriterLock(path, "poll-once").acquire()
    os.unlink(f"{path}.lock")
    intruder = WriterLock(path, "poll-once")
    intruder.acquire()  # got in between: the daemon must not go on writing beside it
    with pytest.raises(WriterBusy, match="'poll-once'"):
        daemon.ensure()
    intruder.release()
