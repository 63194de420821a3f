"""``backup`` while the collector runs and ``restore`` while it does not (issue 13, item 4), through
the real commands: the copy is consistent and opens read-only as it is; a restore checks the file,
keeps what it replaces, refuses while a collector writes, and the API follows it."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import (
    as_nobody,
    needs_root,
    run_collector,
    stop_process,
    stored_totals,
    wait_for_http,
)

from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_common.storage import engines
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import render_status, write_in_place

SINCE = int(time.time()) + 30 * 86400


def write_status(path: Path, rx: int, clients: int = 3) -> None:
    rows = [
        SessionRow(f"user-{i}", f"127.0.0.{i + 1}:5000", "", "", rx + i, rx // 10, SINCE, i)
        for i in range(clients)
    ]
    write_in_place(str(path), render_status(rows, int(time.time())))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def host(tmp_path):
    status = tmp_path / "status.log"
    write_status(status, 1000)
    config = tmp_path / "c.conf"
    dbfile = tmp_path / "lib" / "ovpnmon.db"
    config.write_text(
        f"[database]\npath = {dbfile}\n[collector]\ninterval = 1\n"
        f"[source:udp]\nstatus_file = {status}\nsettle = 0\n"
    )
    assert run_collector("poll-once", "--config", str(config)).returncode == 0
    return config, dbfile, status


@pytest.mark.slow
def test_a_backup_while_the_collector_runs_is_consistent_and_opens_read_only(host, tmp_path):
    config, _, status = host
    daemon = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_collector", "run", "--config", str(config)],
        stderr=subprocess.DEVNULL,
    )
    backups = tmp_path / "backups"
    backups.mkdir()
    try:
        for rx in range(2000, 8000, 1000):  # the collector writes while backups are made
            write_status(status, rx, clients=200)
            result = run_collector("backup", "--config", str(config), str(backups))
            assert result.returncode == 0, result.stderr
            time.sleep(0.3)
    finally:
        stop_process(daemon)
    copies = sorted(backups.glob("ovpnmon-*.db"))
    assert len(copies) >= 2 and all(c.stat().st_mode & 0o777 == 0o640 for c in copies)
    assert "backed up" in result.stdout and "200 clients" in result.stdout
    last = copies[-1]
    for copy in copies:
        with sqlite3.connect(copy) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)  # not WAL
    # read-only as it is: a user who may only read the file and its directory (pytest's own
    # directories are 0700, so a directory of its own, as an administrator would copy it to)
    shelf = Path(tempfile.mkdtemp(prefix="ovpnmon-shelf-"))
    try:
        shelf.chmod(0o755)
        on_shelf = shelf / last.name
        shutil.copy(last, on_shelf)
        on_shelf.chmod(0o444)
        shelf.chmod(0o555)

        def read_it() -> str:
            engine = engines.reader_engine(str(on_shelf))
            with engine.connect() as conn:
                return str(sorted(lifetime_totals(conn))[:2])

        assert as_nobody(read_it) == "['user-0', 'user-1']"
        assert sorted(p.name for p in shelf.iterdir()) == [last.name]  # no -shm, no -wal made
    finally:
        shelf.chmod(0o755)
        shutil.rmtree(shelf)
    # consistent: every client's total is one the collector stored at one poll
    backed = stored_totals(last)
    assert {rx - int(name[5:]) for name, (rx, _, _) in backed.items() if name != "user-0"} <= {
        *range(1000, 8000, 1000)
    }


def test_a_backup_never_replaces_a_file_unless_told(host, tmp_path):
    config, _, _ = host
    target = tmp_path / "mine.db"
    target.write_text("precious")
    result = run_collector("backup", "--config", str(config), str(target))
    assert result.returncode == 1
    assert result.stderr == f"Error: {target} exists: give a new name, or --force to replace it\n"
    assert target.read_text() == "precious"
    assert run_collector("backup", "--config", str(config), str(target), "--force").returncode == 0
    assert stored_totals(target) == stored_totals(host[1])


@pytest.mark.slow
def test_restore_is_refused_while_a_collector_writes_then_checked_kept_and_followed(host, tmp_path):
    config, dbfile, status = host
    saved = tmp_path / "saved.db"
    assert run_collector("backup", "--config", str(config), str(saved)).returncode == 0
    write_status(status, 5000)
    assert run_collector("poll-once", "--config", str(config)).returncode == 0
    before_restore = stored_totals(dbfile)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_collector", "run", "--config", str(config)],
        stderr=subprocess.DEVNULL,
    )
    from conftest import free_port

    port = free_port()
    api = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ovpnmon_api",
            "serve",
            "--config",
            str(config),
            "--port",
            str(port),
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/v1/health")
        time.sleep(1.5)
        refused = run_collector("restore", "--config", str(config), str(saved))
        assert refused.returncode == 1
        assert refused.stderr.endswith(
            "stop it first (systemctl stop ovpnmon-collector), restore, then start it\n"
        ), refused.stderr
        stop_process(daemon)
        restored = run_collector("restore", "--config", str(config), str(saved))
        assert restored.returncode == 0, restored.stderr
        assert f"restored {saved} into {dbfile}: " in restored.stdout
        (kept,) = [p for p in dbfile.parent.glob("ovpnmon.db.replaced-*") if p.name.endswith("Z")]
        assert f"kept as {kept}" in restored.stdout
        assert stored_totals(kept) == before_restore  # what it replaced, whole
        import json
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/stats/user-1") as response:
            body = json.loads(response.read())
        assert body["data"]["totals"]["received_bytes"] == 1001  # the API follows the new file
        assert stored_totals(dbfile) == stored_totals(saved)
    finally:
        stop_process(daemon)
        stop_process(api)


@pytest.mark.parametrize("bad", ["damaged", "not a database", "newer schema", "missing"])
def test_restore_refuses_a_bad_file_and_leaves_the_database_alone(host, tmp_path, bad):
    config, dbfile, _ = host
    source = tmp_path / "bad.db"
    if bad == "damaged":
        assert run_collector("backup", "--config", str(config), str(source)).returncode == 0
        data = bytearray(source.read_bytes())
        page = 4096
        data[page * 2 : page * 3] = b"\x07" * page  # a page of the tables overwritten
        source.write_bytes(bytes(data))
        said = "is damaged (integrity check: "
    elif bad == "not a database":
        source.write_text("hello\n" * 1000)
        said = "is not an ovpnmon database: file is not a database"
    elif bad == "newer schema":
        assert run_collector("backup", "--config", str(config), str(source)).returncode == 0
        with sqlite3.connect(source) as conn:
            conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
        said = "has schema version 99, newer than this ovpnmon understands"
    else:
        said = "is not a file"
    before = digest(dbfile)
    result = run_collector("restore", "--config", str(config), str(source))
    assert result.returncode == 1
    assert said in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert digest(dbfile) == before
    assert not list(dbfile.parent.glob("*.replaced-*")) and not list(
        dbfile.parent.glob(".*restore*")
    )


@pytest.mark.root
@needs_root
def test_a_restore_run_as_root_leaves_a_file_the_collector_owns(host, tmp_path):
    config, dbfile, _ = host
    saved = tmp_path / "saved.db"
    assert run_collector("backup", "--config", str(config), str(saved)).returncode == 0
    os.chown(dbfile, 65534, 65534)  # as if the collector's own user made it
    dbfile.chmod(0o640)
    assert run_collector("restore", "--config", str(config), str(saved)).returncode == 0
    info = dbfile.stat()
    assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (65534, 65534, 0o640)


def test_keep_leaves_the_newest_dated_backups_and_nothing_else_is_touched(host, tmp_path):
    config, _, _ = host
    shelf = tmp_path / "shelf"
    shelf.mkdir()
    (shelf / "notes.txt").write_text("mine")
    (shelf / "ovpnmon-old-manual.db").write_text("mine too")
    for _ in range(4):
        assert (
            run_collector("backup", "--config", str(config), str(shelf), "--keep", "2").returncode
            == 0
        )
    names = sorted(p.name for p in shelf.iterdir())
    dated = [n for n in names if n[8:9].isdigit()]
    assert len(dated) == 2 and {"notes.txt", "ovpnmon-old-manual.db"} <= set(names)
    refused = run_collector(
        "backup", "--config", str(config), str(tmp_path / "x.db"), "--keep", "2"
    )
    assert refused.returncode == 1 and "--keep needs a directory" in refused.stderr
