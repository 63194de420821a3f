"""The extras install only what a host runs (fresh virtual environments, real pip)."""

import subprocess
import sys
from pathlib import Path

import pytest

from ovpnmon_common import schema

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.slow


def venv_with(tmp_path: Path, extra: str) -> Path:
    env = tmp_path / extra
    subprocess.run([sys.executable, "-m", "venv", str(env)], check=True)
    subprocess.run(
        [
            str(env / "bin" / "pip"),
            "install",
            "--quiet",
            "--disable-pip-version-check",
            f"{ROOT}[{extra}]",
        ],
        check=True,
        cwd=tmp_path,
    )
    return env


def can_import(env: Path, module: str) -> bool:
    probe = subprocess.run(  # away from the checkout: the working directory is on sys.path
        [str(env / "bin" / "python"), "-c", f"import {module}"], capture_output=True, cwd=env
    )
    return probe.returncode == 0


@pytest.mark.parametrize(
    ("extra", "script", "present", "absent"),
    [
        ("collector", "ovpnmon-collector", "cryptography", ["falcon", "waitress"]),
        ("api", "ovpnmon-api", "falcon", ["cryptography"]),
    ],
)
def test_extras_bring_only_their_dependencies(tmp_path, extra, script, present, absent):
    env = venv_with(tmp_path, extra)
    version = subprocess.run(
        [str(env / "bin" / script), "--version"], capture_output=True, text=True
    )
    assert version.returncode == 0, version.stderr
    assert version.stdout.startswith(f"{script}, version ")
    assert can_import(env, present)
    for module in absent:
        assert not can_import(env, module), f"[{extra}] should not bring {module}"
    if extra == "collector":
        db = tmp_path / "x.db"
        version = schema.SCHEMA_VERSION
        for expected in (
            f"created schema version {version}",
            f"schema version {version} is current",
        ):
            result = subprocess.run(
                [str(env / "bin" / script), "init-db", "--db", str(db)],
                capture_output=True,
                text=True,
            )
            assert result.returncode == 0 and expected in result.stdout, result.stderr
    # the simulator is a development package: never installed with the product
    assert not can_import(env, "ovpnmon_demo"), f"[{extra}] should not install ovpnmon_demo"
    if extra == "api":  # the dashboard's files come with the API
        probe = subprocess.run(
            [
                str(env / "bin" / "python"),
                "-c",
                "from ovpnmon_api.dashboard import Dashboard; print(sorted(Dashboard().files))",
            ],
            capture_output=True,
            text=True,
            cwd=tmp_path,
        )
        assert probe.returncode == 0, probe.stderr
        for name in ("index.html", "app.js", "style.css", "vendor/uPlot.iife.min.js"):
            assert f"'{name}'" in probe.stdout, probe.stdout
