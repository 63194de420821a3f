"""One OpenVPN instance is read once (issue 13, item 2): two sources on the same file (a link to
it, a hard link) or the same management address are refused at start; a status file and the
management interface of one server are told apart by their sessions and the second is refused,
never counted twice."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import require_openvpn

from ovpnmon_collector.cli import cli
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_common import meta, schema
from ovpnmon_common.storage import engines
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import render_status

SINCE = int(time.time()) + 30 * 86400


def status(path: Path, rx: int) -> None:
    rows = [SessionRow("alice", "198.51.100.7:5000", "", "", rx, 1000, SINCE, 3)]
    path.write_text(render_status(rows, int(time.time())))


def poll_once(config: Path):
    return CliRunner().invoke(cli, ["poll-once", "--config", str(config)])


def config_of(tmp_path: Path, *sources: tuple[str, str]) -> Path:
    body = f"[database]\npath = {tmp_path / 'x.db'}\n"
    for name, line in sources:
        body += f"[source:{name}]\n{line}\n"
    path = tmp_path / "c.conf"
    path.write_text(body)
    return path


@pytest.mark.parametrize("link", ["same", "symlink", "hardlink", "dot-dot"])
def test_two_sources_on_one_status_file_are_refused_at_start(tmp_path, link):
    real = tmp_path / "status.log"
    status(real, 1_001_000)
    other = {
        "same": real,
        "symlink": tmp_path / "link.log",
        "hardlink": tmp_path / "hard.log",
        "dot-dot": tmp_path / "sub" / ".." / "status.log",
    }[link]
    if link == "symlink":
        other.symlink_to(real)
    elif link == "hardlink":
        os.link(real, other)
    elif link == "dot-dot":
        (tmp_path / "sub").mkdir()
    config = config_of(
        tmp_path, ("udp", f"status_file = {real}"), ("copy", f"status_file = {other}")
    )
    result = poll_once(config)
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {config}: [source:udp] and [source:copy] read the same status file ({real} and "
        f"{other}): one OpenVPN instance read twice would be counted twice; keep one of them\n"
    )
    assert not (tmp_path / "x.db").exists()  # refused before anything was written


def test_two_sources_on_one_management_address_are_refused_at_start(tmp_path):
    line = "management = 127.0.0.1:7505"
    result = poll_once(config_of(tmp_path, ("a", line), ("b", line)))
    assert result.exit_code == 1
    assert "[source:a] and [source:b] read the same management interface (127.0.0.1:7505)" in (
        result.output
    )


def test_two_sources_showing_the_same_sessions_count_them_once(tmp_path):
    first, second = tmp_path / "a.log", tmp_path / "b.log"
    config = config_of(
        tmp_path, ("udp", f"status_file = {first}"), ("mirror", f"status_file = {second}")
    )
    for rx in (1000, 1_001_000):
        status(first, rx)
        shutil.copy(first, second)  # the same OpenVPN seen twice (a copy, a relay, ...)
        result = poll_once(config)
        assert result.exit_code == 1  # a source failed
        assert (
            "source mirror: shows the same sessions as source udp (1 in common): one OpenVPN read "
            "twice would be counted twice; keep one of [source:udp] and [source:mirror]"
        ) in result.output
    engine = engines.reader_engine(str(tmp_path / "x.db"))
    with engine.connect() as conn:
        totals = lifetime_totals(conn)
        health = meta.read_status(conn).sources["mirror"]
    engine.dispose()
    assert totals == {"alice": (1_001_000, 1000, True)}  # not 2,002,000
    assert health["state"] == "error"


@pytest.mark.slow
def test_a_real_openvpns_status_file_and_management_interface_are_one_instance(tmp_path):
    require_openvpn()
    from ovpn_harness import Pki, Server, wait_for_sessions

    server = Server(tmp_path / "server", Pki.create(tmp_path / "pki"), status_version=3)
    try:
        server.start()
        wait_for_sessions(server.status_file, 0)
        config = config_of(
            tmp_path,
            ("udp", f"status_file = {server.status_file}"),
            (
                "udp-mgmt",
                f"management = 127.0.0.1:{server.management_port}\n"
                f"management_password_file = {server.password_file}",
            ),
        )
        assert poll_once(config).exit_code == 0  # nobody connected yet: nothing to tell apart
        for name in ("alice", "bob"):
            server.connect(name)
        wait_for_sessions(server.status_file, 2)
        result = poll_once(config)
        assert (
            "source udp-mgmt: shows the same sessions as source udp (2 in common)" in result.output
        )
        time.sleep(1.5)
        result = poll_once(config)
        assert "source udp-mgmt: shows the same sessions as source udp" in result.output
    finally:
        server.stop()
    engine = engines.reader_engine(str(tmp_path / "x.db"))
    with engine.connect() as conn:
        sessions = conn.execute(schema.sessions.select()).all()
    engine.dispose()
    assert sorted(s.source for s in sessions) == ["udp", "udp"]  # never opened a second time
