"""The API follows its database file (issue 13, item 5), through a real waitress process: missing
at start, created by the collector, replaced by ``mv``, deleted, and back."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import free_port, stop_process, wait_for_http

from ovpnmon_collector.cli import cli
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_demo.simulator import render_status

pytestmark = pytest.mark.slow

SINCE = int(time.time()) + 30 * 86400


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def collected_database(tmp_path: Path, name: str, client: str) -> Path:
    """A database the real collector wrote, with one client."""
    status = tmp_path / f"{name}.log"
    rows = [SessionRow(client, "127.0.0.1:1", "", "", 1000, 10, SINCE, 0)]
    status.write_text(render_status(rows, int(time.time())))
    config = tmp_path / f"{name}.conf"
    path = tmp_path / f"{name}.db"
    config.write_text(f"[database]\npath = {path}\n[source:udp]\nstatus_file = {status}\n")
    result = CliRunner().invoke(cli, ["poll-once", "--config", str(config)])
    assert result.exit_code == 0, result.output
    return path


def test_the_api_follows_its_file_missing_created_replaced_deleted_and_back(tmp_path):
    served = tmp_path / "live" / "ovpnmon.db"
    served.parent.mkdir()
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_api", "serve", "--db", str(served), "--port", str(port)],
        stderr=(tmp_path / "api.log").open("wb"),
        env={**os.environ, "OVPNMON_CONFIG": ""},
    )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_for_http(f"{base}/health")  # it started without the file
        status, body = get(f"{base}/stats")
        assert status == 503
        assert body["error"] == (
            f"database unavailable: {served} does not exist (yet): the collector creates it; "
            "is ovpnmon-collector running?"
        )
        status, body = get(f"{base}/health")
        assert (status, body["status"]) == (503, "unhealthy")

        os.replace(collected_database(tmp_path, "first", "alice"), served)  # the collector's
        assert get(f"{base}/clients")[1]["data"] == [{"common_name": "alice", "status": "Active"}]
        assert get(f"{base}/health")[0] == 200

        os.replace(collected_database(tmp_path, "second", "bob"), served)  # a restore, by mv
        assert get(f"{base}/clients")[1]["data"] == [{"common_name": "bob", "status": "Active"}]
        assert get(f"{base}/stats/bob")[0] == 200 and get(f"{base}/stats/alice")[0] == 404

        served.unlink()
        assert get(f"{base}/clients")[0] == 503
        status, body = get(f"{base}/health")
        assert (status, body["status"]) == (503, "unhealthy")

        os.replace(collected_database(tmp_path, "third", "carol"), served)  # back
        assert get(f"{base}/clients")[1]["data"] == [{"common_name": "carol", "status": "Active"}]
        assert get(f"{base}/health")[0] == 200
    finally:
        stop_process(api)
    log = (tmp_path / "api.log").read_text()
    assert "Traceback" not in log
    assert log.count("does not exist (yet)") <= 3  # said when it changes, not on every request


def test_hundreds_of_idle_connections_never_keep_a_new_request_waiting(tmp_path):
    served = collected_database(tmp_path, "one", "alice")
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_api", "serve", "--db", str(served), "--port", str(port)],
        stderr=(tmp_path / "api.log").open("wb"),
        env={**os.environ, "OVPNMON_CONFIG": ""},
    )
    idle: list[http.client.HTTPConnection] = []
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/v1/health")
        for _ in range(300):  # browsers keep a few keep-alive connections each, idle
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/api/v1/health")
            conn.getresponse().read()
            idle.append(conn)
        started = time.monotonic()
        status, body = get(f"http://127.0.0.1:{port}/api/v1/clients")
        waited = time.monotonic() - started
        assert status == 200 and body["count"] == 1
        assert waited < 5, waited  # answered, not queued behind the idle ones
    finally:
        for conn in idle:
            conn.close()
        stop_process(api)
