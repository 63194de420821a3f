"""End to end, a fleet: two real OpenVPN servers as two VPN hosts, a collector daemon for each
(different ``[collector] host``), one PostgreSQL, and the API reading it.

alice connects to both servers, bob to the first, carol to the second. What each collector was
shown is recorded on the way (a relay copies each complete version of the server's status file to
the file the collector reads) and parsed here, independently: the fleet's totals are the sums of
OpenVPN's own counters over both hosts. PostgreSQL is then stopped for a while (dave connects to
the first server meanwhile) and started again: the collectors spool their polls and write them
when it is back, and the totals are still exact, to the byte.
"""

from __future__ import annotations

import signal
import time

import pytest
from conftest import api_server, get_json, require_e2e, require_openvpn
from test_e2e_openvpn import CollectorProcess, Relay, expected_totals

from ovpnmon_common.storage.engines import reader_engine
from ovpnmon_common.totals import lifetime_totals

pytestmark = pytest.mark.slow


def test_two_hosts_one_postgresql_exact_through_an_outage(tmp_path):
    require_openvpn()
    import pg_harness
    from ovpn_harness import Pki, Server, wait_for_sessions

    require_e2e(pg_harness.unavailable())
    cluster = pg_harness.Cluster()
    pki = Pki.create(tmp_path / "pki")
    servers = {
        "vpn-a": Server(tmp_path / "vpn-a", pki, status_version=3),
        "vpn-b": Server(tmp_path / "vpn-b", pki, status_version=3),
    }
    relays: dict[str, Relay] = {}
    collectors: dict[str, CollectorProcess] = {}
    try:
        url = cluster.database()
        for name, server in servers.items():
            server.start()
            wait_for_sessions(server.status_file, 0)  # a whole status file, nobody connected
            relays[name] = Relay(server.status_file, tmp_path / f"{name}-status.log", period=1.5)
            relays[name].copy()  # version 0: what the first poll reads
            assert len(relays[name].versions) == 1
            source = f"status_file = {relays[name].target}"
            collectors[name] = CollectorProcess(tmp_path, name, source, url=url)
        for name in servers:
            collectors[name].start()
            collectors[name].wait_polls(1)  # one at a time: the first creates the schema
            relays[name].start()

        a, b = servers["vpn-a"], servers["vpn-b"]
        a.connect("alice")
        b.connect("alice")  # one client, two hosts
        a.connect("bob")
        b.connect("carol")
        wait_for_sessions(a.status_file, 2)
        wait_for_sessions(b.status_file, 2)
        for collector in collectors.values():
            collector.wait_polls(3)

        cluster.halt()  # the database goes away; the collectors go on polling, spooling
        a.connect("dave")
        wait_for_sessions(a.status_file, 3)
        time.sleep(4)
        cluster.start()
        for collector in collectors.values():
            collector.wait_polls(3)

        for relay in relays.values():  # the files stop changing; every version gets polled
            relay.paused.set()
        for collector in collectors.values():
            collector.wait_polls(2)
        for collector in collectors.values():
            assert collector.signal(signal.SIGTERM) == 0  # finishes its poll, exits cleanly

        logs = {name: c.log.read_text() for name, c in collectors.items()}
        for name, log in logs.items():
            assert "Traceback" not in log, log[-3000:]
            assert "keeping each poll in the spool" in log, name
            assert "spooled polls: the outage is in the history" in log, name

        per_host = {name: expected_totals(relay.versions) for name, relay in relays.items()}
        fleet: dict[str, list[int]] = {}
        for totals in per_host.values():
            for cn, (rx, tx) in totals.items():
                entry = fleet.setdefault(cn, [0, 0])
                entry[0] += rx
                entry[1] += tx
        assert set(fleet) == {"alice", "bob", "carol", "dave"}
        assert all(rx > 0 and tx > 0 for rx, tx in fleet.values()), fleet
        engine = reader_engine(url)
        with engine.connect() as conn:
            stored = {cn: [rx, tx] for cn, (rx, tx, _) in lifetime_totals(conn).items()}
        engine.dispose()
        assert stored == fleet  # OpenVPN's own counters, both hosts, to the byte

        with api_server(url, tmp_path / "api.log") as base:
            for cn, (rx, tx) in fleet.items():
                totals = get_json(f"{base}/stats/{cn}?range=1h")["data"]["totals"]
                assert [totals["received_bytes"], totals["sent_bytes"]] == [rx, tx], cn
            for name, totals in per_host.items():
                totals_there = get_json(f"{base}/stats/alice?host={name}")["data"]["totals"]
                assert [totals_there["received_bytes"], totals_there["sent_bytes"]] == (
                    totals["alice"]
                )
                names = [c["common_name"] for c in get_json(f"{base}/clients?host={name}")["data"]]
                assert names == sorted(totals)
            hosts = get_json(f"{base}/hosts")["data"]
            assert [h["host"] for h in hosts] == ["vpn-a", "vpn-b"]
            analytics = get_json(f"{base}/analytics?range=24h")["data"]
            assert analytics["traffic_distribution"]["rx"] == sum(rx for rx, _ in fleet.values())
    finally:
        for relay in relays.values():
            relay.stopped.set()
        for collector in collectors.values():
            if collector.process is not None and collector.process.poll() is None:
                collector.process.kill()
        for server in servers.values():
            server.stop()
        cluster.stop()
