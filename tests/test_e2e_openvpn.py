"""End to end: a real OpenVPN 2.6 server and clients on 127.0.0.1, the real collector daemon.

Two collectors watch one server, each with its own database: one reads the status file, one the
management interface (with a password). What each was shown by OpenVPN is recorded by the test on
the way (a relay for the file, a recording proxy for the socket) and parsed here independently, so
the expected totals come from OpenVPN's own counters, not from the collector.

Script: carol connects before the collectors start (a baseline); alice, bob and bob (duplicate-cn)
connect after; alice's client is SIGKILLed and reconnects; both collectors are SIGKILLed, dave
connects while they are down, and they are restarted; finally they are stopped with SIGTERM.
"""

from __future__ import annotations

import calendar
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import api_server, get_json, require_openvpn
from ovpn_harness import client_rows
from sqlalchemy import select

from ovpnmon_common import meta, schema
from ovpnmon_common.storage.engines import reader_engine
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import write_in_place

pytestmark = pytest.mark.slow


def expected_totals(snapshots: list[str]) -> dict[str, list[int]]:
    """Per CN: sum over sessions of (last counters seen - counters at first sight if the session
    was already there at the first snapshot, the moment its source was first watched)."""
    first, last = {}, {}
    for index, text in enumerate(snapshots):
        for key, value in client_rows(text).items():
            if key not in first:
                first[key] = value if index == 0 else (value[0], 0, 0)
            last[key] = value
    totals: dict[str, list[int]] = {}
    for key, (cn, rx, tx) in last.items():
        _, brx, btx = first[key]
        t = totals.setdefault(cn, [0, 0])
        t[0] += rx - brx
        t[1] += tx - btx
    return totals


class Relay(threading.Thread):
    """Copies complete versions of OpenVPN's status file to the collector's, in place, logging each."""

    def __init__(self, source: Path, target: Path, period: float) -> None:
        super().__init__(daemon=True)
        self.source, self.target, self.period = source, target, period
        self.versions: list[str] = []
        self.paused = threading.Event()
        self.stopped = threading.Event()

    def copy(self) -> None:
        text = self.source.read_text()
        if text.endswith("END\n") and (not self.versions or text != self.versions[-1]):
            write_in_place(str(self.target), text)
            self.versions.append(text)

    def run(self) -> None:
        while not self.stopped.wait(self.period):
            if not self.paused.is_set():
                self.copy()


class RecordingProxy(threading.Thread):
    """A loopback TCP proxy in front of the management port, keeping what OpenVPN replied."""

    def __init__(self, upstream_port: int) -> None:
        super().__init__(daemon=True)
        self.upstream_port = upstream_port
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.replies: list[str] = []

    def run(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._pipe, args=(conn,), daemon=True).start()

    def _pipe(self, conn: socket.socket) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        received = bytearray()

        def down() -> None:
            try:
                while data := upstream.recv(65536):
                    received.extend(data)
                    conn.sendall(data)
            except OSError:
                pass

        thread = threading.Thread(target=down, daemon=True)
        thread.start()
        try:
            while data := conn.recv(65536):
                upstream.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            upstream.shutdown(socket.SHUT_WR)
        thread.join(timeout=5)
        upstream.close()
        conn.close()
        text = received.decode(errors="replace")
        if "\r\nEND\r\n" in text:
            self.replies.append(text[text.index("TITLE") : text.index("\r\nEND\r\n") + 7])


class CollectorProcess:
    """``ovpnmon-collector run`` polling one source every second: into a SQLite file of its own,
    or (``url``) into a PostgreSQL database as host ``name`` of a fleet (its spool beside)."""

    def __init__(self, workdir: Path, name: str, source_lines: str, url: str | None = None) -> None:
        self.db = url or str(workdir / f"{name}.db")
        self.host = name if url else None
        self.config = workdir / f"{name}.conf"
        database = f"url = {url}" if url else f"path = {self.db}"
        fleet = f"host = {name}\nspool_dir = {workdir / (name + '-spool')}\n" if url else ""
        self.config.write_text(
            f"[database]\n{database}\n[collector]\ninterval = 1\n{fleet}"
            f"[source:main]\n{source_lines}\n"
        )
        self.log = workdir / f"{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ovpnmon_collector", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def signal(self, sig: int) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        return self.process.wait(timeout=30)

    def heartbeat(self) -> int | None:
        """The last stored poll (of its host, in a fleet)."""
        engine = reader_engine(self.db)
        try:
            with engine.connect() as conn:
                status = meta.read_status(conn)
        except Exception:
            return None
        finally:
            engine.dispose()
        if self.host is None:
            return status.heartbeat
        host = status.hosts.get(self.host)
        return host.heartbeat if host is not None else None

    def wait_polls(self, count: int, timeout: float = 30) -> None:
        """Wait until ``count`` more polls are stored (heartbeats are whole seconds, 1 s apart)."""
        start = self.heartbeat() or 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            beat = self.heartbeat()
            if beat is not None and beat >= start + count:
                return
            time.sleep(0.2)
        raise TimeoutError(
            f"{self.log.name}: no {count} polls in {timeout} s:\n{self.log.read_text()[-2000:]}"
        )

    def stored(self) -> tuple[dict[str, list[int]], dict[str, int]]:
        engine = reader_engine(self.db)
        with engine.connect() as conn:
            c, s = schema.clients, schema.sessions
            totals = {cn: [rx, tx] for cn, (rx, tx, _) in lifetime_totals(conn).items()}
            sessions: dict[str, int] = {}
            for (cn,) in conn.execute(select(c.c.common_name).join(s, s.c.client_id == c.c.id)):
                sessions[cn] = sessions.get(cn, 0) + 1
            integrity = conn.exec_driver_sql("PRAGMA integrity_check").scalar()
        engine.dispose()
        assert integrity == "ok"
        return totals, sessions


def test_exact_accounting_against_real_openvpn(tmp_path):
    require_openvpn()
    from ovpn_harness import Pki, Server, wait_for_sessions

    began = int(time.time())
    pki = Pki.create(tmp_path / "pki")
    server = Server(tmp_path / "server", pki, status_version=3)
    server.start()
    relay = None
    proxy = None
    collectors: list[CollectorProcess] = []
    try:
        server.connect("carol")  # connected before anything watches: a baseline, never counted
        wait_for_sessions(server.status_file, 1)

        relay_target = tmp_path / "relayed-status.log"
        relay = Relay(server.status_file, relay_target, period=2.5)
        relay.copy()  # version 0: what the file collector's first poll reads
        proxy = RecordingProxy(server.management_port)
        proxy.start()
        by_file = CollectorProcess(tmp_path, "file", f"status_file = {relay_target}")
        by_mgmt = CollectorProcess(
            tmp_path,
            "mgmt",
            f"management = 127.0.0.1:{proxy.port}\nmanagement_password_file = {server.password_file}",
        )
        collectors = [by_file, by_mgmt]
        for c in collectors:
            c.start()
        for c in collectors:
            c.wait_polls(1)
        relay.start()

        alice = server.connect("alice")
        server.connect("bob")
        server.connect("bob")  # duplicate-cn: two sessions of one CN
        wait_for_sessions(server.status_file, 4)
        time.sleep(3)

        alice.kill()  # the client dies; the server drops its session after ping-restart
        alice.wait()
        server.connect("alice")
        deadline = time.monotonic() + 40
        while time.monotonic() < deadline:
            if (
                sum(r[0] == "alice" for r in client_rows(server.status_file.read_text()).values())
                == 1
            ):
                break
            time.sleep(0.5)
        else:
            pytest.fail("the killed alice session never left OpenVPN's list")
        for c in collectors:
            c.wait_polls(3)

        for c in collectors:  # crash: no chance to finish anything
            assert c.signal(signal.SIGKILL) == -signal.SIGKILL
        server.connect("dave")  # connects while nothing watches: counted in full later
        time.sleep(2)
        for c in collectors:
            c.start()
        for c in collectors:
            c.wait_polls(4)

        relay.paused.set()  # the file stops changing; let the file collector see the last version
        by_file.wait_polls(2)
        for c in collectors:
            assert c.signal(signal.SIGTERM) == 0  # finishes its poll and exits cleanly
    finally:
        if relay is not None:
            relay.stopped.set()
        for c in collectors:
            if c.process is not None and c.process.poll() is None:
                c.process.kill()
        if proxy is not None:
            proxy.listener.close()
        server.stop()

    logs = "\n".join(c.log.read_text()[-3000:] for c in collectors)
    assert "Traceback" not in logs, logs
    for collector, seen in ((by_file, relay.versions), (by_mgmt, proxy.replies)):
        expected = expected_totals(seen)
        totals, sessions = collector.stored()
        assert set(expected) == {"carol", "alice", "bob", "dave"}
        assert totals == expected, (collector.log.name, logs)
        assert sessions == {"carol": 1, "alice": 2, "bob": 2, "dave": 1}
        # carol's baseline was real traffic that is not counted; dave's first bytes are
        carol_now = next(rx for cn, rx, _ in client_rows(seen[-1]).values() if cn == "carol")
        dave_now = next(rx for cn, rx, _ in client_rows(seen[-1]).values() if cn == "dave")
        assert 0 < expected["carol"][0] < carol_now
        assert expected["dave"][0] == dave_now
    # the management reads went through the password prompt every time
    assert len(proxy.replies) >= 8
    check_api_against_openvpn(by_file.db, expected_totals(relay.versions), relay.versions, began)


def expected_log(snapshots: list[str]) -> dict[tuple[str, int, str], dict]:
    """(CN, Connected Since, Real Address) -> what the connection log should say of each session
    the snapshots listed (bob's two duplicate-cn sessions may share a second), parsed here: its
    counted bytes (as ``expected_totals``), and
    the times of the last snapshot listing it and of the first one after it (None: listed to
    the end)."""
    log: dict[tuple[str, int], dict] = {}
    for index, text in enumerate(snapshots):
        lines = [line.split("\t") for line in text.splitlines()]
        stamp = next(int(f[2]) for f in lines if f[0] == "TIME")
        header = next(f[2:] for f in lines if f[:2] == ["HEADER", "CLIENT_LIST"])
        listed = set()
        for fields in lines:
            if fields[0] != "CLIENT_LIST" or fields[1] == "UNDEF":
                continue
            row = dict(zip(header, fields[1:], strict=True))
            since = int(row["Connected Since (time_t)"])
            key = (row["Common Name"], since, row["Real Address"])
            listed.add(key)
            rx, tx = int(row["Bytes Received"]), int(row["Bytes Sent"])
            entry = log.setdefault(key, {"base": (rx, tx) if index == 0 else (0, 0)})
            entry.update(rx=rx - entry["base"][0], tx=tx - entry["base"][1], last=stamp, gone=None)
        for key, entry in log.items():
            if key not in listed and entry["gone"] is None and entry["last"] < stamp:
                entry["gone"] = stamp
    return log


def epoch(text: str) -> int:
    """An API timestamp (UTC, the default [api] timezone) as epoch seconds."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M:%S"))


def check_connection_log(base: str, snapshots: list[str], began: int) -> None:
    """``/sessions``, paged two at a time, is every connection OpenVPN listed: to the second
    and the byte; the killed alice closed, the rest open; ``/usage`` since the start equals
    the sums."""
    pages, cursor = [], None
    while True:
        query = "?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = get_json(f"{base}/sessions{query}")
        pages.extend(page["data"])
        cursor = page["next_cursor"]
        if cursor is None:
            break
    expected = expected_log(snapshots)
    got = {(e["common_name"], epoch(e["connected_since"]), e["real_address"]): e for e in pages}
    assert len(pages) == len(got) == len(expected) == 6
    assert set(got) == set(expected)
    since = [e["connected_since"] for e in pages]
    assert since == sorted(since, reverse=True)  # newest first
    for key, want in expected.items():
        entry = got[key]
        assert (entry["bytes_received"], entry["bytes_sent"]) == (want["rx"], want["tx"]), key
        closed = entry["disconnected_at"]
        if key[0] == "alice" and want["gone"] is not None:
            # the killed session: closed by the first poll that no longer saw it
            assert closed is not None and entry["active"] is False
            assert want["last"] <= epoch(closed) <= want["gone"] + 10, (want, closed)
        else:
            assert closed is None and entry["active"] is True, key
    assert sum(k[0] == "alice" for k in got) == 2 and sum(k[0] == "bob" for k in got) == 2
    # per client, and usage since the test began (UTC, with an offset)
    alice = get_json(f"{base}/clients/alice/sessions")["data"]
    assert [e["id"] for e in alice] == [e["id"] for e in pages if e["common_name"] == "alice"]
    start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(began - 60))
    usage = {e["common_name"]: e for e in get_json(f"{base}/usage?from={start}")["data"]}
    for name in ("alice", "bob", "carol", "dave"):
        rows = [e for e in pages if e["common_name"] == name]
        assert usage[name]["bytes_received"] == sum(e["bytes_received"] for e in rows), name
        assert usage[name]["bytes_sent"] == sum(e["bytes_sent"] for e in rows), name


def check_api_against_openvpn(
    database: str, expected: dict[str, list[int]], snapshots: list[str], began: int
) -> None:
    """The real API under waitress answers with OpenVPN's own numbers, to the byte."""
    log_path = Path(database).with_name("api.log")
    with api_server(database, log_path) as base:
        for cn, (rx, tx) in expected.items():
            data = get_json(f"{base}/stats/{cn}?range=1h")["data"]
            assert data["totals"]["received_bytes"] == rx, cn
            assert data["totals"]["sent_bytes"] == tx, cn
            history = data["history"]
            assert len(history) == 120
            # the whole test ran within the hour: the 30-second buckets hold every byte
            assert sum(p["bytes_received"] for p in history) == rx, cn
            assert sum(p["bytes_sent"] for p in history) == tx, cn
        system = get_json(f"{base}/stats/system")["data"]
        assert system["total_clients"] == len(expected)
        total_rx = sum(rx for rx, _ in expected.values())
        analytics = get_json(f"{base}/analytics?range=24h")["data"]
        assert analytics["traffic_distribution"]["rx"] == total_rx
        assert analytics["max_concurrent_24h"] == 4
        top = {t["common_name"]: t["total"] for t in analytics["top_clients_24h"]}
        assert top == {cn: rx + tx for cn, (rx, tx) in expected.items()}
        check_connection_log(base, snapshots, began)
    log = log_path.read_text()
    assert "Traceback" not in log
    assert "GET /api/v1/stats/system 200" in log  # one access-log line per request
