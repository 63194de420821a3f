"""The README's first command, headless: healthy within 2 minutes, data everywhere, nothing left."""

import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, get_json

from ovpnmon_common.planner import ANALYTICS, RANGES

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.slow


def processes_mentioning(text):
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline:
            found.append((int(pid), cmdline))
    return found


def test_demo_runs_serves_every_range_and_leaves_nothing_behind(tmp_path):
    port = free_port()
    data = tmp_path / "demo-data"
    log_path = tmp_path / "demo.log"  # a file, not a pipe: an undrained pipe blocks at 64 KiB
    with open(log_path, "wb") as log:
        demo = subprocess.Popen(
            # the README's command itself: it makes (or reuses) ./.venv, installs, and execs demo.py
            [str(ROOT / "scripts" / "demo"), "--port", str(port), "--data", str(data)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.monotonic() + 120
        health = None
        while time.monotonic() < deadline:
            try:
                health = get_json(f"{base}/health")
                if health["status"] == "healthy":
                    break
            except OSError:
                pass
            time.sleep(1)
        assert health and health["status"] == "healthy", health
        assert len(processes_mentioning(str(data))) >= 3  # the demo, the collector, the API

        for range_name in RANGES:
            body = get_json(f"{base}/stats/user-000?range={range_name}")
            assert body["success"], body
            assert sum(p["bytes_received"] for p in body["data"]["history"]) > 0, range_name
        for range_name in ANALYTICS:
            body = get_json(f"{base}/analytics?range={range_name}")["data"]
            assert len(body["global_history_24h"]) == 96 and body["traffic_distribution"]["rx"] > 0
            assert body["top_clients_24h"], range_name
        assert get_json(f"{base}/stats")["count"] == 25
        assert get_json(f"{base}/clients")["count"] == 25
        assert get_json(f"{base}/stats/system")["data"]["total_received_gb"] > 0
        certs = get_json(f"{base}/certificates")["data"]
        assert len(certs) == 9 and any(c["is_expired"] for c in certs)  # 8 clients and the CA
        assert get_json(f"{base}/stats/shared-laptop?range=7d")["data"]["history"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as page:
            assert page.headers["Content-Type"].startswith("text/html")
            assert b"/dashboard/app.js" in page.read()
    finally:
        os.killpg(demo.pid, signal.SIGINT)  # Ctrl-C
        try:
            demo.wait(timeout=60)
        except subprocess.TimeoutExpired:
            demo.kill()
    output = log_path.read_text()
    assert demo.returncode == 0, output
    # the first thing it says once up is where the dashboard is
    up = [line for line in output.splitlines() if line.startswith("demo: ")]
    assert f"demo: dashboard: http://127.0.0.1:{port}/" in up
    assert up.index(f"demo: dashboard: http://127.0.0.1:{port}/") < next(
        i for i, line in enumerate(up) if "collector and API are running" in line
    )
    assert "demo: stopped" in output
    time.sleep(0.5)
    assert processes_mentioning(str(data)) == []


def test_demo_never_deletes_a_directory_it_did_not_make(tmp_path):
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.txt").write_text("four years of work")
    result = subprocess.run(
        [
            str(ROOT / ".venv" / "bin" / "python"),
            str(ROOT / "scripts" / "demo.py"),
            "--data",
            str(precious),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith(f"Error: --data {precious} exists and was not made by the demo")
    assert (precious / "thesis.txt").read_text() == "four years of work"
