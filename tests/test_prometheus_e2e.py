"""A real Prometheus scrapes a live ``ovpnmon-api`` while a real OpenVPN 2.6 serves real clients:
a client reconnects, OpenVPN restarts, the collector is SIGKILLed and started again. Afterwards no
client counter has a reset, and what Prometheus saw move equals what the JSON API's lifetime
totals moved (issue 16)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, require_e2e, require_openvpn, stop_process, wait_for_http
from ovpn_harness import Pki, Server, client_rows

pytestmark = [pytest.mark.slow, pytest.mark.root]

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "ovpnmon-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "ovpnmon-dashboard.json"
# what Grafana puts in place of its variables, for queries sent to Prometheus directly
GRAFANA_VARIABLES = {"$__rate_interval": "5s", "$__range": "10m", "$client": ".*"}
NAMES = ("alice", "bob")


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files:\n  - {RULES}\n"
            "scrape_configs:\n  - job_name: ovpnmon\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: ['{target}']\n"
        )
        self.process = subprocess.Popen(
            [
                shutil.which("prometheus") or "/usr/bin/prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stderr=(workdir / "prometheus.log").open("wb"),
        )
        wait_for_http(f"{self.base}/-/ready", timeout=60)

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = get(f"{self.base}/api/v1/query?{urllib.parse.urlencode(params)}")
        assert body["status"] == "success", body
        return body["data"]["result"]

    def counter(self, name: str) -> dict[str, float]:
        return {
            r["metric"]["client"]: float(r["value"][1])
            for r in self.query(f'{name}{{job="ovpnmon"}}')
        }

    def scrapes(self) -> float:
        """How many scrapes of the target Prometheus has stored."""
        found = self.query('count_over_time(up{job="ovpnmon"}[10m])')
        return float(found[0]["value"][1]) if found else 0.0

    def stop(self) -> None:
        stop_process(self.process)


def api_totals(base: str) -> dict[str, tuple[int, int]]:
    totals = {}
    for name in NAMES:
        t = get(f"{base}/api/v1/stats/{name}?range=1h")["data"]["totals"]
        totals[name] = (t["received_bytes"], t["sent_bytes"])
    return totals


def start_collector(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_collector", "run", "--config", str(config)],
        stderr=log.open("ab"),
        cwd=ROOT,
    )


def settle(prometheus: Prometheus, base: str, seconds: float = 4) -> None:
    """Let the collector poll and Prometheus scrape a few times."""
    before = prometheus.scrapes()
    time.sleep(seconds)
    deadline = time.monotonic() + 30
    while prometheus.scrapes() < before + 2 and time.monotonic() < deadline:
        time.sleep(0.5)


def test_a_real_prometheus_sees_counters_that_never_reset(tmp_path):
    require_openvpn()
    require_e2e(None if shutil.which("prometheus") else "prometheus is not installed")
    pki = Pki.create(tmp_path / "pki")
    server = Server(tmp_path / "server", pki, status_version=3)
    collector = api = prometheus = None
    try:
        server.start()
        clients = {
            "alice": server.connect("alice", ping=1),
            "bob-1": server.connect("bob", "bob-1", ping=1),
            "bob-2": server.connect("bob", "bob-2", ping=1),  # duplicate-cn
        }
        db = tmp_path / "ovpnmon.db"
        config = tmp_path / "ovpnmon.conf"
        port = free_port()
        config.write_text(
            f"[database]\npath = {db}\n[collector]\ninterval = 1\n"
            f"[source:udp]\nstatus_file = {server.status_file}\n[api]\nport = {port}\n"
            f"[certificates]\npaths = {pki.directory}\n"
        )
        collector = start_collector(config, tmp_path / "collector.log")
        deadline = time.monotonic() + 30
        while not db.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        api = subprocess.Popen(
            [sys.executable, "-m", "ovpnmon_api", "serve", "--config", str(config)],
            stderr=(tmp_path / "api.log").open("wb"),
            cwd=ROOT,
        )
        base = f"http://127.0.0.1:{port}"
        wait_for_http(f"{base}/api/v1/health")
        prometheus = Prometheus(tmp_path, f"127.0.0.1:{port}")

        def freeze(sig: int) -> None:  # counters stand still while everything is stopped
            for process in [server.process, *server.clients]:
                if process is not None and process.poll() is None:
                    process.send_signal(sig)

        def frozen_reading() -> tuple[dict, dict, dict]:
            freeze(signal.SIGSTOP)
            try:
                settle(prometheus, base, 3)
                return (
                    api_totals(base),
                    prometheus.counter("ovpnmon_client_received_bytes_total"),
                    prometheus.counter("ovpnmon_client_sent_bytes_total"),
                )
            finally:
                freeze(signal.SIGCONT)

        settle(prometheus, base)
        first_api, first_rx, first_tx = frozen_reading()
        assert set(first_rx) == set(NAMES), first_rx
        for name in NAMES:  # what was scraped is what the JSON API says
            assert (first_rx[name], first_tx[name]) == first_api[name]

        # 1. alice's client dies and comes back: a new session, OpenVPN's counters from zero
        before = client_rows(server.status_file.read_text())
        clients["alice"].kill()
        clients["alice"].wait()
        clients["alice"] = server.connect("alice", "alice-again", ping=1)
        settle(prometheus, base)

        # 2. OpenVPN restarts: every session starts again, Client IDs from 0
        server.stop()
        server.clients.clear()
        server.start()
        for label, cn in (("alice-3", "alice"), ("bob-3", "bob"), ("bob-4", "bob")):
            server.connect(cn, label, ping=1)
        settle(prometheus, base)
        after = client_rows(server.status_file.read_text())
        openvpn_reset = any(
            rx < max(r for c, r, _ in before.values() if c == cn) for cn, rx, _ in after.values()
        )
        assert openvpn_reset  # OpenVPN's own per-session counters did go back

        # 3. the collector is SIGKILLed mid-run and started again
        collector.send_signal(signal.SIGKILL)
        collector.wait(timeout=30)
        time.sleep(2)
        collector = start_collector(config, tmp_path / "collector.log")
        settle(prometheus, base, 6)

        last_api, last_rx, last_tx = frozen_reading()
        for name in NAMES:
            assert (last_rx[name], last_tx[name]) == last_api[name]
            # what Prometheus saw move is what the lifetime totals moved
            assert last_rx[name] - first_rx[name] == last_api[name][0] - first_api[name][0]
            assert last_tx[name] - first_tx[name] == last_api[name][1] - first_api[name][1]
            assert last_rx[name] > first_rx[name]
        for metric in ("ovpnmon_client_received_bytes_total", "ovpnmon_client_sent_bytes_total"):
            resets = prometheus.query(f"resets({metric}[10m])")
            assert resets and all(float(r["value"][1]) == 0 for r in resets), resets
        # the API was up at every scrape; every rule evaluates on the real series
        assert float(prometheus.query('min_over_time(up{job="ovpnmon"}[10m])')[0]["value"][1]) == 1
        rules = get(f"{prometheus.base}/api/v1/rules")["data"]["groups"][0]["rules"]
        assert len(rules) == 5 and all(r["health"] == "ok" for r in rules), rules

        # every query of the Grafana dashboard returns data from this Prometheus
        dashboard = json.loads(DASHBOARD.read_text())
        queries = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
        assert len(queries) >= 8
        for expr in queries:
            sent = expr
            for variable, value in GRAFANA_VARIABLES.items():
                sent = sent.replace(variable, value)
            assert prometheus.query(sent), f"no data for panel query {expr!r}"
        variable = dashboard["templating"]["list"][0]["query"]["query"]
        assert variable == "label_values(ovpnmon_client_received_bytes_total, client)"
        clients_label = get(f"{prometheus.base}/api/v1/label/client/values")["data"]
        assert set(NAMES) <= set(clients_label)
    finally:
        if prometheus is not None:
            prometheus.stop()
        if api is not None:
            stop_process(api)
        if collector is not None:
            stop_process(collector)
        server.stop()
