"""Shared fixtures: real SQLite files in tmp_path, real status text, a fake clock."""

from __future__ import annotations

from pathlib import Path

import pytest

from ovpnmon_common.config import Config
from ovpnmon_common.db import init_db, writer_engine

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


class FakeClock:
    """Wall and monotonic clocks a test moves by hand (they may step independently)."""

    def __init__(self, wall: float = 1_795_717_500.0, mono: float = 1000.0) -> None:
        self.wall = wall
        self.mono = mono

    def time(self) -> float:
        return self.wall

    def monotonic(self) -> float:
        return self.mono

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "ovpnmon.db")


@pytest.fixture
def engine(db_path: str):
    engine = writer_engine(db_path)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def config(db_path: str) -> Config:
    return Config(database_path=db_path)


def require_openvpn() -> None:
    """Skip where a real OpenVPN cannot run; under CI (OVPNMON_REQUIRE_E2E=1) fail instead."""
    import os

    from ovpn_harness import openvpn_available

    reason = openvpn_available()
    if reason is None:
        return
    if os.environ.get("OVPNMON_REQUIRE_E2E"):
        pytest.fail(f"end-to-end test cannot run: {reason}")
    pytest.skip(reason)
