"""Shared fixtures: real SQLite files in tmp_path, real status text, a fake clock."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from ovpnmon_common.config import Config
from ovpnmon_common.formatting import format_timestamp
from ovpnmon_common.storage.engines import writer_engine
from ovpnmon_common.storage.migrations import init_db
from ovpnmon_demo.clock import ManualClock

FIXTURES = Path(__file__).parent / "fixtures"


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


# the one hand-moved clock (ovpnmon_demo/clock.py), under the name the tests know
FakeClock = ManualClock


class TickingClock(ManualClock):
    """Monotonic time moves a second at every look: a deadline N seconds away is N looks of a
    job that checks it (the wall clock stays where it is set)."""

    def monotonic(self) -> float:
        self.mono += 1
        return self.mono


def stored_totals(path) -> dict[str, tuple[int, int, bool]]:
    """The lifetime totals (received, sent, active) a database file holds, read read-only."""
    from ovpnmon_common.storage import engines
    from ovpnmon_common.totals import lifetime_totals

    engine = engines.reader_engine(str(path))
    try:
        with engine.connect() as conn:
            return lifetime_totals(conn)
    finally:
        engine.dispose()


def insert_client(
    engine,
    name: str,
    *,
    id: int | None = None,
    active: bool = False,
    seen: int = 1_795_717_500,
    closed_received: int = 0,
    closed_sent: int = 0,
) -> None:
    """A clients row written behind the collector's back (another writer, a hand-made history)."""
    from ovpnmon_common import schema

    values = dict(
        common_name=name,
        first_seen=seen,
        last_seen=seen,
        active=active,
        closed_received=closed_received,
        closed_sent=closed_sent,
    )
    with engine.begin() as conn:
        from ovpnmon_common import meta
        from ovpnmon_common.config import default_host

        # on the host a Store made without a name writes as (this machine's)
        values["host_id"] = meta.register_host(conn, default_host(), seen)
        from ovpnmon_common.storage import engines, postgres

        values["id"] = id if id is not None else engines.next_ids(conn, "clients", 1)[0]
        conn.execute(schema.clients.insert().values(**values))
        if id is not None and engine.dialect.name == "postgresql":
            postgres.advance_sequences(conn, ("clients",))  # as copy-to does after its rows


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


ENGINES = ("sqlite", "postgresql")


def pytest_generate_tests(metafunc) -> None:
    """Every test that takes ``db_path`` runs on both storage engines (a SQLite file in
    tmp_path, and a new database on the test PostgreSQL), except those marked
    ``sqlite_only`` (about SQLite's file: permissions, WAL, backups of the file)."""
    if "db_path" in metafunc.fixturenames:
        only = metafunc.definition.get_closest_marker("sqlite_only")
        metafunc.parametrize("db_path", ENGINES[:1] if only else ENGINES, indirect=True)


@pytest.fixture(scope="session")
def postgres_cluster():
    """One PostgreSQL cluster for the session (started when a test first needs it)."""
    import pg_harness

    require_e2e(pg_harness.unavailable())
    cluster = pg_harness.Cluster()
    yield cluster
    cluster.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)])
def fresh_database(request):
    """For property tests, which need a new database for each example: a function whose
    ``with`` block has an empty database of the parameter's engine (a path or a URL). On
    PostgreSQL they take a minute: marked slow (CI runs them)."""
    cluster = request.getfixturevalue("postgres_cluster") if request.param != "sqlite" else None

    @contextlib.contextmanager
    def make() -> Iterator[str]:
        if cluster is None:
            with tempfile.TemporaryDirectory() as tmp:
                yield str(Path(tmp) / "x.db")
            return
        url = cluster.database()
        try:
            yield url
        finally:
            cluster.drop(url)

    return make


@pytest.fixture
def db_path(request, tmp_path: Path) -> Iterator[str]:
    """The test's database: a SQLite file path, or a PostgreSQL URL (a new database)."""
    if getattr(request, "param", "sqlite") == "sqlite":
        yield str(tmp_path / "ovpnmon.db")
        return
    cluster = request.getfixturevalue("postgres_cluster")
    url = cluster.database()
    yield url
    cluster.drop(url)


@pytest.fixture
def engine(db_path: str):
    engine = writer_engine(db_path)
    init_db(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def config(db_path: str) -> Config:
    return Config(database=db_path)


def require_e2e(reason: str | None) -> None:
    """Skip an end-to-end test that cannot run here (``reason``, None if it can); under CI
    (OVPNMON_REQUIRE_E2E=1) fail instead: a skip there would pass for a success."""
    import os

    if reason is None:
        return
    if os.environ.get("OVPNMON_REQUIRE_E2E"):
        pytest.fail(f"end-to-end test cannot run: {reason}")
    pytest.skip(reason)


def require_openvpn() -> None:
    """Skip where a real OpenVPN cannot run; under CI (OVPNMON_REQUIRE_E2E=1) fail instead."""
    from ovpn_harness import openvpn_available

    require_e2e(openvpn_available())


def as_nobody(func) -> str:
    """Fork, drop to uid/gid 65534 and return ``str(func())`` (or ``ERROR <exc>``) from the child.

    Everything the child needs must be imported before the call: the unprivileged child cannot
    read root's site-packages.
    """
    import os

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        try:
            os.close(read_fd)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                message = str(func())
            except Exception as exc:
                message = f"ERROR {type(exc).__name__}: {exc}"
            os.write(write_fd, message.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        result = pipe.read()
    os.waitpid(pid, 0)
    return result


def row(cn: str, cid: int, since: int, rx: int, tx: int):
    """One status-file client row: client ``cid`` with its own real and virtual address."""
    from ovpnmon_collector.snapshot import SessionRow

    return SessionRow(cn, f"127.0.0.1:{40000 + cid}", f"10.98.0.{cid + 2}", "", rx, tx, since, cid)


class StatusPoller:
    """The real collector polling a real status file (source ``udp``) every ``step`` seconds of
    a fake clock: ``poll(row(...), ...)`` writes the file and stores one poll."""

    def __init__(
        self, engine, tmp_path: Path, start: int, step: int = 10, host: str | None = None
    ) -> None:
        from ovpnmon_collector.collector import Collector
        from ovpnmon_collector.sources import StatusFileSource
        from ovpnmon_collector.store import Store

        self.status = tmp_path / f"status-{host or 'local'}.log"
        self.clock = FakeClock(start)
        self.step = step
        source = StatusFileSource("udp", str(self.status), settle=0)
        self.collector = Collector(Store(engine, host), [source], interval=step, clock=self.clock)

    def poll(self, *rows) -> None:
        from ovpnmon_demo.simulator import render_status

        self.status.write_text(render_status(rows, int(self.clock.wall)))
        assert self.collector.poll().stored
        self.clock.advance(self.step)

    def close(self) -> None:
        self.collector.close()


needs_root = pytest.mark.skipif(
    __import__("os").geteuid() != 0 and not __import__("os").environ.get("OVPNMON_REQUIRE_E2E"),
    reason="needs root (CI runs as root)",
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str, timeout: float = 10) -> dict:
    import json
    import urllib.request

    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def wait_for_http(url: str, timeout: float = 20) -> None:
    """Wait until ``url`` answers with any HTTP status (a server is up); fail after ``timeout``."""
    import time
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def api_server(database: str, log_path, *args: str):
    """A real ``ovpnmon_api serve`` on a free loopback port; yields its ``/api/v1`` base URL.

    Its log goes to the file ``log_path``, never to a pipe: a pipe nobody drains fills at 64 KiB
    of access log, and the server then blocks mid-request in its next log write. On a clean exit
    of the block the server is stopped with SIGTERM and must exit 0 within 15 seconds.
    """
    import subprocess
    import sys

    port = free_port()
    command = [sys.executable, "-m", "ovpnmon_api", "serve", "--db", database, "--port", str(port)]
    with open(log_path, "wb") as log:
        api = subprocess.Popen([*command, *args], stderr=log)
    base = f"http://127.0.0.1:{port}/api/v1"
    try:
        wait_for_http(f"{base}/health")
        yield base
    except BaseException:
        api.kill()
        api.wait()
        raise
    stop_process(api, timeout=15)
    assert api.returncode == 0, Path(log_path).read_text()[-4000:]


def stop_process(process, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not ended within ``timeout`` seconds."""
    import signal
    import subprocess

    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def run_collector(*args: str, timeout: float = 120, preexec_fn=None):
    """``python -m ovpnmon_collector ARGS`` in a child, without the caller's OVPNMON_CONFIG."""
    import os
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "ovpnmon_collector", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=preexec_fn,
        env={**os.environ, "OVPNMON_CONFIG": ""},
    )


def raw_reading_answers(client, names, end: int) -> dict[str, bytes]:
    """Every answer that reads raw samples: one client's raw-tier ranges, its samples as stored,
    every client's usage between edges that are not a bucket's, the whole server (``client``
    a falcon test client of an API whose clock stands at ``end``)."""
    at = format_timestamp  # UTC: the API's default timezone
    urls = [
        f"/api/v1/usage?from={at(end - 7 * 3600 - 401)}Z&to={at(end - 1111)}Z".replace(" ", "T"),
        "/api/v1/analytics?range=24h",
        "/api/v1/stats",
    ]
    for name in names:
        urls += [f"/api/v1/stats/{name}?range={r}" for r in ("1h", "3h", "6h", "12h", "24h")]
        urls += [
            f"/api/v1/stats/{name}?range=6h&resolution=raw",
            f"/api/v1/stats/{name}?range=12h&resolution=5min",
            f"/api/v1/usage?common_name={name}&from={at(end - 5 * 3600 - 7)}Z".replace(" ", "T"),
        ]
    found = {}
    for url in urls:
        response = client.simulate_get(url)
        assert response.status_code in (200, 404), (url, response.text)
        found[url] = response.content
    return found
