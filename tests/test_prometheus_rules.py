"""The alerting rules and scrape job shipped in deploy/prometheus/, checked and unit-tested with
promtool (cases that fire and cases that stay silent)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import require_e2e

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


@pytest.fixture
def promtool() -> str:
    found = shutil.which("promtool")
    require_e2e(None if found else "promtool is not installed (Debian package prometheus)")
    assert found
    return found


def run(promtool: str, *args: str, cwd: Path = DEPLOY) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_the_rules_and_the_scrape_job_are_valid(promtool):
    rules = run(promtool, "check", "rules", "ovpnmon-rules.yml")
    assert rules.returncode == 0 and "SUCCESS: 5 rules found" in rules.stdout, rules.stderr
    config = run(promtool, "check", "config", "--syntax-only", "ovpnmon.yml")
    assert config.returncode == 0, config.stderr


def test_every_alert_fires_when_it_should_and_only_then(promtool):
    result = run(promtool, "test", "rules", "ovpnmon-rules.test.yml")
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tested = (DEPLOY / "ovpnmon-rules.test.yml").read_text()
    for alert in (
        "OvpnmonApiDown",
        "OvpnmonCollectorStale",
        "OvpnmonSourceDown",
        "OvpnmonCertificateExpiringSoon",
        "OvpnmonCertificateExpired",
    ):
        assert f"alertname: {alert}" in tested, alert


def test_the_rule_tests_catch_a_broken_rule(promtool, tmp_path):
    """A stale threshold of 30 intervals instead of 3 must fail the tests: they are not vacuous."""
    broken = (
        (DEPLOY / "ovpnmon-rules.yml")
        .read_text()
        .replace(
            "> 3 * ovpnmon_collector_interval_seconds", "> 30 * ovpnmon_collector_interval_seconds"
        )
    )
    (tmp_path / "ovpnmon-rules.yml").write_text(broken)
    shutil.copy(DEPLOY / "ovpnmon-rules.test.yml", tmp_path)
    result = run(promtool, "test", "rules", "ovpnmon-rules.test.yml", cwd=tmp_path)
    assert result.returncode != 0 and "OvpnmonCollectorStale" in result.stdout + result.stderr
