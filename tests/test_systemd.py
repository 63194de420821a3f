"""The systemd units verify clean, score at most 2.0 on exposure, and match the deployment guide."""

import configparser
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
UNITS = sorted((ROOT / "deploy" / "systemd").glob("*.service"))
GUIDE = (ROOT / "docs" / "deploy.md").read_text()
INSTALLED = "/opt/ovpnmon/venv/bin"


def analyze():
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("OVPNMON_REQUIRE_E2E"):
            pytest.fail("systemd-analyze is missing (apt-get install -y systemd)")
        pytest.skip("systemd-analyze is not installed")
    return tool


def unit_values(path):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(path)
    return parser


TIMERS = sorted((ROOT / "deploy" / "systemd").glob("*.timer"))


def test_the_units_are_the_collector_the_api_and_the_backup():
    assert [u.name for u in UNITS] == [
        "ovpnmon-api.service",
        "ovpnmon-backup.service",
        "ovpnmon-collector.service",
    ]
    assert [t.name for t in TIMERS] == ["ovpnmon-backup.timer"]


@pytest.mark.parametrize("unit", UNITS + TIMERS, ids=lambda u: u.name)
def test_unit_verifies_clean(unit, tmp_path):
    tool = analyze()
    # verify checks that ExecStart exists: point the guide's install path at this checkout's venv
    for each in UNITS + TIMERS:
        text = each.read_text().replace(INSTALLED, str(Path(sys.executable).parent))
        (tmp_path / each.name).write_text(text)
    copy = tmp_path / unit.name
    result = subprocess.run([tool, "verify", str(copy)], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout + result.stderr == "", (
        result.stdout + result.stderr
    )


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_unit_exposure_is_at_most_two(unit):
    tool = analyze()
    result = subprocess.run(
        [tool, "security", "--offline=yes", str(unit)], capture_output=True, text=True
    )
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_guide_matches_the_unit(unit):
    service = unit_values(unit)["Service"]
    for key in ("User", "Group", "SupplementaryGroups"):
        if key in service:
            assert f"`{service[key]}`" in GUIDE, (key, service[key])
    assert service["ExecStart"].split()[0].startswith(INSTALLED)
    assert INSTALLED in GUIDE and "/etc/ovpnmon/ovpnmon.conf" in GUIDE
    started_by = unit.with_suffix(".timer")
    enabled = started_by.name if started_by.exists() else unit.name
    assert f"systemctl enable --now {enabled}" in GUIDE
    if "StateDirectory" in service:
        assert f"/var/lib/{service['StateDirectory']}" in GUIDE
