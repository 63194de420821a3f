"""Sources are isolated from each other in time, and the watchdog keeps its own schedule
(issue 12, item 8), through the real daemon."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import stop_process
from sqlalchemy import select

from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_common import meta, schema
from ovpnmon_common.storage import engines
from ovpnmon_demo.simulator import render_status

pytestmark = pytest.mark.slow


def silent_server() -> tuple[socket.socket, int]:
    """A TCP listener on 127.0.0.1 that accepts every connection and never says a word."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(listener.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return listener, listener.getsockname()[1]


def start_daemon(config: Path, log: Path, **env: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_collector", "run", "--config", str(config)],
        stderr=log.open("wb"),
        env={**os.environ, **env},
    )


def test_a_hanging_management_source_never_delays_a_status_file(tmp_path):
    status = tmp_path / "status.log"
    now = int(time.time())
    status.write_text(
        render_status([SessionRow("alice", "127.0.0.1:5", "", "", 10, 1, now, 0)], now)
    )
    listener, port = silent_server()
    config = tmp_path / "c.conf"
    config.write_text(
        f"[database]\npath = {tmp_path / 'x.db'}\n[collector]\ninterval = 1\n"
        f"[source:udp]\nstatus_file = {status}\n"
        f"[source:stuck]\nmanagement = 127.0.0.1:{port}\ntimeout = 5\n"
    )
    daemon = start_daemon(config, tmp_path / "collector.log")
    try:
        time.sleep(8)
    finally:
        stop_process(daemon)
        listener.close()
    engine = engines.reader_engine(str(tmp_path / "x.db"))
    with engine.connect() as conn:
        polls = conn.execute(select(schema.global_history.c.ts)).scalars().all()
        alice = conn.execute(select(schema.usage_history.c.ts)).scalars().all()
        health = str(meta.read_status(conn).sources.get("stuck"))
    engine.dispose()
    log = (tmp_path / "collector.log").read_text()
    # a poll stored every second, each with the file's client, while the other source hangs
    assert len(polls) >= 6, (polls, log)
    assert sorted(alice) == sorted(polls)
    assert max(b - a for a, b in itertools.pairwise(sorted(polls))) <= 2
    assert health is not None and f"management 127.0.0.1:{port}: no answer within 5 s" in health
    assert "Traceback" not in log


def test_the_watchdog_is_fed_on_its_own_schedule_whatever_the_interval(tmp_path):
    status = tmp_path / "status.log"
    status.write_text(render_status([], int(time.time())))
    config = tmp_path / "c.conf"
    config.write_text(
        f"[database]\npath = {tmp_path / 'x.db'}\n[collector]\ninterval = 150\n"
        f"[source:udp]\nstatus_file = {status}\n"
    )
    notify = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify)
    listener.settimeout(0.2)
    # WatchdogSec=1: systemd expects a ping at least every second, asks for one every half
    daemon = start_daemon(
        config, tmp_path / "collector.log", NOTIFY_SOCKET=notify, WATCHDOG_USEC="1000000"
    )
    pings: list[float] = []
    try:
        end = time.monotonic() + 20
        while time.monotonic() < end and len(pings) < 8:
            try:
                if listener.recv(4096) == b"WATCHDOG=1":
                    pings.append(time.monotonic())
            except TimeoutError:
                continue
    finally:
        stop_process(daemon)
        listener.close()
    assert len(pings) >= 8, pings  # not one per 150 s poll
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps[1:]) < 1.0, gaps  # within WatchdogSec, after the first poll's start-up


def test_a_watchdog_meant_for_another_process_is_left_alone():
    from ovpnmon_collector.notify import Notifier

    assert Notifier("/nonexistent", "4000000").watchdog_every == 2.0
    os.environ["WATCHDOG_PID"] = "1"
    os.environ["WATCHDOG_USEC"] = "4000000"
    try:
        assert Notifier("/nonexistent").watchdog_every is None
    finally:
        del os.environ["WATCHDOG_PID"], os.environ["WATCHDOG_USEC"]
    assert Notifier("/nonexistent").watchdog_every is None
