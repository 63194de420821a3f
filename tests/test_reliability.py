"""The reliability suite: crashes, torn reads, hostile input, and a soak under load.

Figures from the last run are in docs/reliability.md; the slow scenarios print theirs
(``pytest -s -m slow tests/test_reliability.py``).
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import falcon.testing
import pytest
from conftest import FIXTURES, free_port, wait_for_http
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select
from sqlalchemy.exc import OperationalError

from ovpnmon_api.app import create_app
from ovpnmon_collector.accounting import session_key
from ovpnmon_collector.parser import parse_status
from ovpnmon_collector.snapshot import StatusError
from ovpnmon_common import schema
from ovpnmon_common.config import Config
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import Simulation, render_status, write_in_place

# --- bad input --------------------------------------------------------------------------------

REAL = [p.read_text() for p in sorted(FIXTURES.glob("*.txt"))]


@st.composite
def mangled_status(draw):
    """Real status text, cut, spliced, and sprinkled with junk."""
    text = draw(st.sampled_from(REAL))
    for _ in range(draw(st.integers(0, 4))):
        where = draw(st.integers(0, len(text)))
        action = draw(st.sampled_from(["cut", "insert", "delete", "swap"]))
        junk = draw(st.text(min_size=1, max_size=20))
        if action == "cut":
            text = text[:where]
        elif action == "insert":
            text = text[:where] + junk + text[where:]
        elif action == "delete":
            text = text[:where] + text[where + len(junk) :]
        else:
            text = text.replace(",", "\t") if "," in text else text.replace("\t", ",")
    return text


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        mangled_status(),
        st.text(max_size=2000),
        st.binary(max_size=500).map(lambda b: b.decode("utf-8", "replace")),
    )
)
def test_parser_raises_only_the_documented_error(text):
    try:
        snapshot = parse_status(text)
    except StatusError as exc:
        assert str(exc)  # a message a person can read
        return
    for session in snapshot.sessions:
        assert session.bytes_received >= 0 and session.bytes_sent >= 0
        assert session.common_name != "UNDEF"


@pytest.fixture(scope="module")
def small_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "ovpnmon.db"
    engine = engines.writer_engine(str(path))
    migrations.init_db(engine)
    from ovpnmon_demo.simulator import populate

    now = int(time.time())
    populate(
        engine, str(path.with_suffix(".status")), now - 3 * 3600, now, 600, Simulation(clients=6)
    )
    engines.close_writer(engine)
    return str(path)


def digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


HOSTILE = [
    "../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "' OR '1'='1",
    "'; DROP TABLE clients; --",
    '" OR 1=1 --',
    "%00",
    "%ff%fe",
    "%c3%28",
    "\\x00",
    "a" * 5000,
    "%25%25%25",
    "<script>alert(1)</script>",
    "user-000\n",
    "user-000%0d%0aSet-Cookie:x",
    "*",
    "%",
    "?",
    "#",
]


def test_thousands_of_hostile_requests_no_5xx_and_no_write(small_db):
    before = digest(small_db)
    client = falcon.testing.TestClient(create_app(Config(database=small_db)))
    rng = random.Random(7)
    params = ["range", "resolution", "x", "", "range[]", "RANGE"]
    values = [*HOSTILE, "1h", "24h", "1y", "raw", "5min", "", "-1", "1e9", "NaN"]
    statuses: Counter[int] = Counter()
    for _ in range(3000):
        name = rng.choice([*HOSTILE, "user-000", "system", "nobody", ""])
        path = rng.choice(
            ["/stats/", "/clients/", "/analytics", "/stats", "/certificates", "/health", "/"]
        )
        if path in ("/stats/", "/clients/"):
            path = path + quote(name, safe="%") + ("/stats" if path == "/clients/" else "")
        query = "&".join(
            f"{quote(rng.choice(params), safe='%[]')}={quote(rng.choice(values), safe='%')}"
            for _ in range(rng.randint(0, 3))
        )
        result = client.simulate_get(f"/api/v1{path}", query_string=query)
        statuses[result.status_code] += 1
        assert result.status_code < 500, (path, query, result.text)
        body = result.json
        assert (isinstance(body, dict) and "success" in body) or "status" in body, result.text
    assert digest(small_db) == before  # not a byte written
    assert statuses[200] > 0 and statuses[400] > 0 and statuses[404] > 0


def test_invalid_utf8_in_the_path_is_a_clean_404(small_db):
    client = falcon.testing.TestClient(create_app(Config(database=small_db)))
    result = client.simulate_get("/api/v1/stats/%ff%fe%fd")
    assert result.status_code == 404 and result.json["success"] is False


# --- security ---------------------------------------------------------------------------------


def test_the_apis_own_connections_cannot_write(small_db):
    app_engine = engines.reader_engine(small_db)
    create_app(Config(database=small_db), engine=app_engine)
    with (
        app_engine.connect() as conn,
        pytest.raises(OperationalError, match=r"readonly|query_only"),
    ):
        conn.execute(insert(schema.meta).values(key="x", value="y"))


def test_default_bind_is_loopback(small_db):
    assert Config().api.host == "127.0.0.1"
    port = free_port()
    api = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_api", "serve", "--db", small_db, "--port", str(port)],
        stderr=subprocess.DEVNULL,
        env={**os.environ, "OVPNMON_CONFIG": ""},
    )
    try:
        deadline = time.monotonic() + 20
        listening = []
        while not listening and time.monotonic() < deadline:
            time.sleep(0.2)
            for table in ("/proc/net/tcp", "/proc/net/tcp6"):
                for line in Path(table).read_text().splitlines()[1:]:
                    local, state = line.split()[1], line.split()[3]
                    if state == "0A" and int(local.split(":")[1], 16) == port:
                        listening.append(local.split(":")[0])
        assert listening == ["0100007F"], listening  # 127.0.0.1 only, not 0.0.0.0 or ::
    finally:
        api.send_signal(signal.SIGTERM)
        api.wait(timeout=15)


# --- crash safety -----------------------------------------------------------------------------


def scripted_sequence(start: int, polls: int) -> list[str]:
    """Status texts of a simulated server: connects, traffic, disconnects, a duplicate CN."""
    simulation = Simulation(clients=12, seed=99)
    return [render_status(simulation.step(start + 10 * k), start + 10 * k) for k in range(polls)]


def expected_from(texts: list[str]) -> dict[str, tuple[int, int]]:
    last: dict[tuple[str, int], tuple[str, int, int]] = {}
    for text in texts:
        for s in parse_status(text).sessions:
            key = session_key(s.client_id, s.real_address)
            last[(key, s.connected_since)] = (s.common_name, s.bytes_received, s.bytes_sent)
    totals: dict[str, list[int]] = {}
    for cn, rx, tx in last.values():
        t = totals.setdefault(cn, [0, 0])
        t[0] += rx
        t[1] += tx
    return {cn: (rx, tx) for cn, (rx, tx) in totals.items()}


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_counts_nothing_twice(tmp_path):
    # simulated times after the first watch, so every session counts in full
    texts = scripted_sequence(int(time.time()) + 30, 50)
    status = tmp_path / "status.log"
    config = tmp_path / "c.conf"
    config.write_text(
        f"[database]\npath = {tmp_path / 'x.db'}\n[source:s]\nstatus_file = {status}\n"
    )
    rng = random.Random(2026)
    kills = 0
    for text in texts:
        write_in_place(str(status), text)
        for attempt in itertools.count():  # restart until this version is stored
            process = subprocess.Popen(
                [sys.executable, "-m", "ovpnmon_collector", "poll-once", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            # Every third try runs to its end: on a machine where a poll-once takes longer than
            # the longest kill delay, the others alone never stored a version, and the loop went
            # on until the status file was stale, and then for ever.
            timeout = 120 if attempt % 3 == 2 else rng.uniform(0.15, 0.9)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.send_signal(signal.SIGKILL)
                process.wait()
                kills += 1
                continue
            if process.returncode == 0:
                break
    engine = engines.reader_engine(str(tmp_path / "x.db"))
    with engine.connect() as conn:
        totals = {cn: (rx, tx) for cn, (rx, tx, _) in lifetime_totals(conn).items()}
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    print(f"\ncrash safety: 50 polls, {kills} SIGKILLs mid-poll, totals exact")
    assert kills >= 10  # the scenario really crashed the collector, many times
    expected = expected_from(texts)
    assert {cn: v for cn, v in totals.items() if v != (0, 0)} == {
        cn: v for cn, v in expected.items() if v != (0, 0)
    }


# --- soak ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_soak_collector_every_second_api_under_16_connections(tmp_path):
    duration = float(os.environ.get("OVPNMON_SOAK_SECONDS", "60"))
    status = tmp_path / "status.log"
    dbfile = tmp_path / "x.db"
    port = free_port()
    config = tmp_path / "c.conf"
    config.write_text(
        f"[database]\npath = {dbfile}\n[collector]\ninterval = 1\n[source:s]\nstatus_file = {status}\n"
        f"[api]\nport = {port}\nthreads = 8\n"
    )
    simulation = Simulation(clients=200, seed=1)
    write_in_place(str(status), render_status(simulation.step(int(time.time())), int(time.time())))
    stop = threading.Event()

    def openvpn() -> None:  # rewrites the status file every second, like `status FILE 1`
        while not stop.wait(1):
            now = int(time.time())
            write_in_place(str(status), render_status(simulation.step(now), now))

    threading.Thread(target=openvpn, daemon=True).start()
    # logs to files: a pipe nobody reads would fill up and stall the processes
    collector_log_file = open(tmp_path / "collector.log", "wb")  # noqa: SIM115
    api_log_file = open(tmp_path / "api.log", "wb")  # noqa: SIM115
    collector = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_collector", "run", "--config", str(config)],
        stderr=collector_log_file,
    )
    deadline = time.monotonic() + 20
    while not dbfile.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2)
    api = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_api", "serve", "--config", str(config)],
        stderr=api_log_file,
    )
    paths = [
        "/api/v1/stats/{one}?range=24h",
        "/api/v1/stats/{two}?range=1h",
        "/api/v1/analytics?range=24h",
        "/api/v1/analytics?range=30d",
        "/api/v1/stats",
        "/api/v1/stats/system",
        "/api/v1/clients",
        "/api/v1/health",
        "/api/v1/clients/{one}/stats?range=7d",
    ]
    latencies: list[float] = []
    statuses: Counter[int] = Counter()
    errors: list[str] = []
    lock = threading.Lock()

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        end = time.monotonic() + duration
        while time.monotonic() < end:
            path = rng.choice(paths)
            started = time.perf_counter()
            try:
                conn.request("GET", path)
                response = conn.getresponse()
                body = response.read()
            except OSError as exc:
                with lock:
                    errors.append(f"{path}: {exc}")
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                continue
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                statuses[response.status] += 1
                if response.status >= 500 or b"locked" in body:
                    errors.append(f"{path}: {response.status} {body[:200]!r}")

    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/v1/health")
        # clients the collector has already seen (a simulated client may not have connected yet)
        probe = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        probe.request("GET", "/api/v1/clients")
        known = [c["common_name"] for c in json.loads(probe.getresponse().read())["data"]]
        paths = [p.format(one=quote(known[0]), two=quote(known[-1])) for p in paths]
        polls_before = count_polls(dbfile)
        began = time.monotonic()
        workers = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.monotonic() - began
        polls = count_polls(dbfile) - polls_before
    finally:
        stop.set()
        api.send_signal(signal.SIGTERM)
        collector.send_signal(signal.SIGTERM)
        api.wait(timeout=30)
        collector.wait(timeout=30)
    collector_log_file.close()
    api_log_file.close()
    api_log = (tmp_path / "api.log").read_text()
    collector_log = (tmp_path / "collector.log").read_text()
    latencies.sort()
    p50 = statistics.median(latencies) * 1000
    p99 = latencies[int(len(latencies) * 0.99)] * 1000
    print(
        f"\nsoak: {len(latencies)} requests in {elapsed:.0f} s = {len(latencies) / elapsed:.0f} req/s, "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, {polls} polls stored, statuses {dict(statuses)}"
    )
    assert errors == [], errors[:5]
    assert set(statuses) == {200}
    assert "locked" not in api_log + collector_log and "Traceback" not in api_log + collector_log
    assert "WARNING" not in collector_log, collector_log[-2000:]
    assert polls >= int(elapsed) - 2  # a poll every second, none lost
    with_gaps = polls_with_gaps(dbfile)
    assert with_gaps == [], with_gaps[:5]


def count_polls(path: Path) -> int:
    engine = engines.reader_engine(str(path))
    try:
        with engine.connect() as conn:
            return conn.execute(select(func.count()).select_from(schema.global_history)).scalar()
    finally:
        engine.dispose()


def polls_with_gaps(path: Path) -> list[tuple[int, int]]:
    engine = engines.reader_engine(str(path))
    try:
        with engine.connect() as conn:
            stamps = [r[0] for r in conn.execute(select(schema.global_history.c.ts).order_by("ts"))]
    finally:
        engine.dispose()
    return [(a, b) for a, b in itertools.pairwise(stamps) if b - a > 2]
