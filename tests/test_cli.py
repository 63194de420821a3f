"""Both command-line programs through click's CliRunner (and the daemon as a real process)."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from ovpnmon_api.app import YOUNG_THRESHOLD
from ovpnmon_api.cli import cli as api_cli
from ovpnmon_collector.cli import cli
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_common import __version__, meta, schema
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.storage.engines import reader_engine
from ovpnmon_demo.simulator import render_status


@pytest.fixture
def runner():
    return CliRunner()


def write_config(tmp_path, body):
    path = tmp_path / "ovpnmon.conf"
    path.write_text(body)
    return str(path)


def alice_status_file(tmp_path):
    """A v3 status file, written now, listing one session of alice."""
    status = tmp_path / "status.log"
    now = int(time.time())
    row = SessionRow("alice", "127.0.0.1:5", "10.98.0.2", "", 10, 20, now - 5, 0)
    status.write_text(render_status([row], now))
    return status


def test_version_and_help(runner):
    for program, name in ((cli, "ovpnmon-collector"), (api_cli, "ovpnmon-api")):
        result = runner.invoke(program, ["--version"])
        assert result.exit_code == 0, result.output
        assert result.output.strip() == f"{name}, version {__version__}"
        result = runner.invoke(program, ["-h"])
        assert result.exit_code == 0 and "Example:" in result.output
    result = runner.invoke(cli, ["init-db", "-h"])
    assert "ovpnmon-collector init-db --db /var/lib/ovpnmon/ovpnmon.db" in result.output
    for command in (
        "run",
        "poll-once",
        "rollup",
        "backfill",
        "prune",
        "init-db",
        "scan-certs",
        "info",
    ):
        assert runner.invoke(cli, [command, "-h"]).exit_code == 0
        assert f"  {command} " in runner.invoke(cli, ["-h"]).output


def test_init_db_twice_leaves_one_schema_version(runner, tmp_path):
    path = str(tmp_path / "sub" / "x.db")
    first = runner.invoke(cli, ["init-db", "--db", path])
    assert first.exit_code == 0, first.output
    assert first.output == f"created schema version {schema.SCHEMA_VERSION} in {path}\n"
    second = runner.invoke(cli, ["init-db", "--db", path])
    assert second.exit_code == 0, second.output
    assert second.output == f"schema version {schema.SCHEMA_VERSION} is current in {path}\n"
    engine = reader_engine(path)
    with engine.connect() as conn:
        count = conn.execute(
            select(func.count())
            .select_from(schema.meta)
            .where(schema.meta.c.key == "schema_version")
        ).scalar()
        assert count == 1 and migrations.schema_version(conn) == schema.SCHEMA_VERSION


def test_bad_config_is_one_line_and_non_zero(runner, tmp_path):
    config = write_config(tmp_path, "[collector]\ninterval = ten\n")
    result = runner.invoke(cli, ["run", "--config", config])
    assert result.exit_code == 1
    assert (
        result.stderr
        == f"Error: {config}: [collector] interval: expected a whole number from 1 to 3600, got 'ten'\n"
    )
    assert "Traceback" not in result.output


def test_missing_config_file(runner, tmp_path):
    result = runner.invoke(cli, ["init-db", "--config", str(tmp_path / "none.conf")])
    assert result.exit_code == 1
    assert result.stderr.startswith(
        f"Error: {tmp_path / 'none.conf'}: cannot read config file: No such file"
    )


def test_config_from_environment(runner, tmp_path, monkeypatch):
    config = write_config(tmp_path, f"[database]\npath = {tmp_path / 'env.db'}\n")
    monkeypatch.setenv("OVPNMON_CONFIG", config)
    result = runner.invoke(cli, ["init-db"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "env.db").exists()


def test_collector_needs_a_source(runner, tmp_path):
    config = write_config(tmp_path, f"[database]\npath = {tmp_path / 'x.db'}\n")
    result = runner.invoke(cli, ["poll-once", "--config", config])
    assert result.exit_code == 1
    assert "no [source:NAME] section" in result.stderr


def test_unwritable_database_location(runner, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = runner.invoke(cli, ["init-db", "--db", str(blocker / "x.db")])
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: cannot create database directory {blocker}")


def test_poll_once_reads_and_stores(runner, tmp_path):
    status = alice_status_file(tmp_path)
    config = write_config(
        tmp_path, f"[database]\npath = {tmp_path / 'x.db'}\n[source:udp]\nstatus_file = {status}\n"
    )
    result = runner.invoke(cli, ["poll-once", "--config", config])
    assert result.exit_code == 0, result.output
    assert "1 of 1 sources read, 1 active clients, 1 sessions" in result.output
    status.unlink()
    result = runner.invoke(cli, ["poll-once", "--config", config])
    assert result.exit_code == 1
    assert f"source udp: status file {status} does not exist" in result.stderr


@pytest.mark.parametrize(
    ("content", "said"),
    [
        (b"not a database, just text\n" * 200, "file is not a database"),
        (b"", "has no ovpnmon schema: run 'ovpnmon-collector init-db'"),
    ],
)
def test_api_refuses_a_file_that_is_no_ovpnmon_database(runner, tmp_path, content, said):
    path = tmp_path / "foreign.db"
    path.write_bytes(content)
    result = runner.invoke(api_cli, ["serve", "--db", str(path)])
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1 and said in result.stderr, result.stderr
    assert "Traceback" not in result.output


def test_info_on_a_file_that_is_no_database_is_one_line(runner, tmp_path):
    path = tmp_path / "garbage.db"
    path.write_bytes(b"\x00garbage" * 500)
    result = runner.invoke(cli, ["info", "--db", str(path)])
    assert result.exit_code == 1
    assert result.stderr == f"Error: cannot read database {path}: file is not a database\n"


def test_api_refuses_newer_schema(runner, tmp_path):
    path = str(tmp_path / "x.db")
    assert runner.invoke(cli, ["init-db", "--db", path]).exit_code == 0
    engine = engines.writer_engine(path)
    with engine.begin() as conn:
        meta.put(conn, "schema_version", "99")
    engines.close_writer(engine)
    result = runner.invoke(api_cli, ["serve", "--db", path])
    assert result.exit_code == 1
    assert (
        f"schema version 99, newer than this ovpnmon understands ({schema.SCHEMA_VERSION}): "
        "upgrade ovpnmon" in result.stderr
    )


# `ovpnmon-api serve` as run, its server stubbed at the moment it would listen: what the
# garbage collector still walks then, how often it runs while a body's worth of objects is
# alive, and whether garbage made later is still collected
_SERVE_UNTIL_LISTENING = """
import gc, sys, waitress
from ovpnmon_api.cli import cli

class Listening:
    def run(self):
        walked = len(gc.get_objects())
        runs = []
        gc.callbacks.append(lambda phase, info: runs.append(1) if phase == "start" else None)
        body = [(i, str(i)) for i in range(60_000)]  # a cold /stats of 10,000 clients, as many
        during_body = len(runs)
        cycle = []
        cycle.append(cycle)
        del cycle, body
        alive = [(i,) for i in range(int(sys.argv[2]))]
        print(gc.get_freeze_count(), walked, during_body, len(runs) - during_body, gc.collect())

waitress.create_server = lambda app, **options: Listening()
cli(["serve", "--db", sys.argv[1], "--port", "5099"])
"""


def test_api_serves_with_its_startup_objects_out_of_the_collectors_walks(runner, tmp_path):
    """A cold /stats of 8,000 clients made the cyclic garbage collector walk the tens of
    thousands of objects alive since startup (modules, the app) about once a request, some
    30 ms of it: ``serve`` freezes them before it listens. And it walked the body's own objects
    (some 60,000 tuples, none of them garbage) dozens of times while the body was built:
    ``serve`` raises the collector's first threshold above that. What is made later is still
    collected: a cycle, by a collection as soon as enough objects are alive. In a child
    process: the collector's settings are process-wide."""
    path = str(tmp_path / "x.db")
    assert runner.invoke(cli, ["init-db", "--db", path]).exit_code == 0
    out = subprocess.run(
        [sys.executable, "-c", _SERVE_UNTIL_LISTENING, path, str(YOUNG_THRESHOLD)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.split()
    frozen, walked, during_body, after, collected = map(int, out)
    assert frozen > 20_000, "the server's modules and app are frozen"
    assert walked < 1_000, "what a full collection walks, from what is left"
    assert during_body == 0, "no collection while a body of 60,000 objects is built"
    assert after >= 1, "a collection runs once that many more objects are alive"
    assert collected == 0, "the cycle made after startup was collected by then"


@pytest.mark.slow
def test_daemon_notifies_systemd_and_stops_cleanly_on_sigterm(tmp_path):
    status = alice_status_file(tmp_path)
    config = write_config(
        tmp_path,
        f"[database]\npath = {tmp_path / 'x.db'}\n[collector]\ninterval = 1\n[source:udp]\nstatus_file = {status}\n",
    )
    notify_path = str(tmp_path / "notify.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(notify_path)
    listener.settimeout(15)
    env = {**os.environ, "NOTIFY_SOCKET": notify_path}
    process = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_collector", "run", "--config", config],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        messages = []
        while sum(m == "WATCHDOG=1" for m in messages) < 2:
            messages.append(listener.recv(4096).decode())
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=15) == 0
        while "STOPPING=1" not in messages:
            messages.append(listener.recv(4096).decode())
    finally:
        if process.poll() is None:
            process.kill()
        listener.close()
    assert messages[0] == "READY=1"
    assert "STATUS=1 clients, 1 sessions" in messages
    stderr = process.stderr.read().decode()
    assert "received SIGTERM, stopping after the current poll" in stderr and "stopped" in stderr
    assert "Traceback" not in stderr
    # a clean stop leaves the file readable without the WAL side files
    assert not os.path.exists(tmp_path / "x.db-wal")


def test_rollup_and_backfill_commands(runner, tmp_path):
    path = str(tmp_path / "x.db")
    assert runner.invoke(cli, ["init-db", "--db", path]).exit_code == 0
    result = runner.invoke(cli, ["rollup", "--db", path])
    assert result.exit_code == 0, result.output
    assert "hourly" in result.output and "global_15min" in result.output
    assert "raw samples        0 buckets packed" in result.output
    result = runner.invoke(
        cli,
        [
            "backfill",
            "--db",
            path,
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
            "--tier",
            "hourly",
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith("hourly")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--from", "yesterday", "--to", "2026-01-02"],
            "Invalid value for --from: expected a date YYYY-MM-DD, got 'yesterday'",
        ),
        (
            ["--from", "2026-01-03", "--to", "2026-01-02"],
            "Invalid value for --to: 2026-01-02 is before --from 2026-01-03",
        ),
        (
            ["--from", "2026-01-01", "--to", "2026-01-02", "--tier", "weekly"],
            "Invalid value for '--tier': 'weekly' is not one of",
        ),
        (["--to", "2026-01-02"], "Missing option '--from'"),
    ],
)
def test_backfill_rejects_bad_input(runner, tmp_path, args, message):
    result = runner.invoke(cli, ["backfill", "--db", str(tmp_path / "x.db"), *args])
    assert result.exit_code == 2
    assert message in result.stderr


@pytest.mark.parametrize(
    ("program", "args", "line"),
    [
        (
            "ovpnmon_collector",
            ["run", "--bogus"],
            "Error: No such option '--bogus' (see 'ovpnmon-collector run -h')",
        ),
        (
            "ovpnmon_collector",
            ["frob"],
            "Error: No such command 'frob' (see 'ovpnmon-collector -h')",
        ),
        (
            "ovpnmon_api",
            ["serve", "--port", "x"],
            "Error: Invalid value for '--port': 'x' is not a valid integer range (see 'ovpnmon-api serve -h')",
        ),
    ],
)
def test_a_bad_option_is_one_line_and_exit_status_2(program, args, line):
    result = subprocess.run(
        [sys.executable, "-m", program, *args], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stderr, result.stdout) == (2, line + "\n", "")


def test_the_collector_creates_its_files_for_its_group_only(tmp_path):
    path = tmp_path / "x.db"
    result = subprocess.run(
        [sys.executable, "-m", "ovpnmon_collector", "init-db", "--db", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=lambda: os.umask(0o022),  # a root shell's usual umask
    )
    assert result.returncode == 0, result.stderr
    for created in (path, tmp_path / "x.db.lock"):
        assert created.stat().st_mode & 0o777 == 0o640, (created, oct(created.stat().st_mode))
