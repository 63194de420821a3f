"""The response cache: bodies kept per database state, never served for an older one."""

import os
import shutil
import sqlite3

import falcon.testing
import pytest
from conftest import FakeClock

from ovpnmon_api.app import create_app
from ovpnmon_api.cache import ResponseCache
from ovpnmon_collector.collector import Collector
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.store import Store
from ovpnmon_common import meta
from ovpnmon_common.config import ApiConfig, Config
from ovpnmon_common.storage import engines, migrations
from ovpnmon_demo.simulator import render_status

T0 = 1_795_717_500  # 2026-11-26 15:45:00 UTC
URLS = [
    "/api/v1/stats/alice?range=1h",
    "/api/v1/stats/alice?range=24h&resolution=hourly",
    "/api/v1/stats/bob?range=1h&resolution=raw",
    "/api/v1/analytics?range=24h",
    "/api/v1/stats",
    "/api/v1/stats/system",
    "/api/v1/clients",
    "/api/v1/certificates",
]


def session(cn, cid, rx, tx):
    return SessionRow(cn, f"127.0.0.1:{40000 + cid}", f"10.98.0.{cid + 2}", "", rx, tx, T0, cid)


class Setup:
    """A collector polling a status file, and two APIs on its database: cached and not."""

    def __init__(self, tmp_path, tokens=(), warmer=None):
        """``tokens`` for the cached API; ``warmer(path)`` makes its warmer (default: the
        app's own)."""
        self.path = str(tmp_path / "ovpnmon.db")
        self.status = tmp_path / "status.log"
        self.engine = engines.writer_engine(self.path)
        migrations.init_db(self.engine)
        self.clock = FakeClock(T0 + 5)
        source = StatusFileSource("udp", str(self.status), settle=0)
        self.collector = Collector(Store(self.engine), [source], clock=self.clock)
        self.api_now = float(T0 + 60)
        config = Config(database=self.path, api=ApiConfig(tokens=tokens))
        self.cache = ResponseCache(engines.ChangeCounter(self.path), 1 << 22)
        self.warmer = warmer(self.path) if warmer is not None else None
        self.cached = falcon.testing.TestClient(
            create_app(config, clock=lambda: self.api_now, cache=self.cache, warmer=self.warmer)
        )
        uncached = Config(database=self.path, api=ApiConfig(cache_mb=0))
        self.fresh = falcon.testing.TestClient(create_app(uncached, clock=lambda: self.api_now))

    def poll(self, *rows):
        self.status.write_text(render_status(rows, int(self.clock.wall)))
        assert self.collector.poll().stored
        self.clock.advance(10)

    def both(self, url):
        path, _, query = url.partition("?")
        cached = self.cached.simulate_get(path, query_string=query)
        fresh = self.fresh.simulate_get(path, query_string=query)
        assert cached.status_code == fresh.status_code == 200, (url, fresh.text)
        assert cached.headers["content-type"] == fresh.headers["content-type"]
        return cached.content, fresh.content


@pytest.fixture
def setup(tmp_path):
    s = Setup(tmp_path)
    yield s
    s.collector.close()


def test_a_body_is_reused_only_while_the_database_is_unchanged(setup):
    setup.poll(session("alice", 1, 1000, 100), session("bob", 2, 50, 5))
    setup.poll(session("alice", 1, 3000, 300), session("bob", 2, 60, 6))
    before = {}
    for url in URLS:
        cached, fresh = setup.both(url)
        assert cached == fresh  # the same bytes as building it now
        before[url] = cached
    misses = setup.cache.misses
    for url in URLS:
        assert setup.both(url)[0] == before[url]
    assert setup.cache.misses == misses  # all served from the cache
    assert setup.cache.hits >= len(URLS)

    setup.poll(session("alice", 1, 9000, 900), session("bob", 2, 60, 6))  # a commit
    for url in URLS:
        cached, fresh = setup.both(url)
        assert cached == fresh  # never the body of the state before
    assert setup.both("/api/v1/stats/alice?range=1h")[0] != before["/api/v1/stats/alice?range=1h"]
    # connected before the first poll: 1000 was the baseline
    assert b'"received_bytes":8000' in setup.both("/api/v1/stats/alice?range=1h")[0]


def test_analytics_keeps_its_data_but_not_its_timestamp(setup):
    setup.poll(session("alice", 1, 1000, 100))
    first, _ = setup.both("/api/v1/analytics?range=24h")
    hits = setup.cache.hits
    setup.api_now += 7  # same 15-minute bucket: the same window, a later "timestamp"
    cached, fresh = setup.both("/api/v1/analytics?range=24h")
    assert cached == fresh and cached != first
    assert setup.cache.hits == hits + 1
    assert cached.split(b'"data":')[1] == first.split(b'"data":')[1]


def test_the_cache_is_bounded_in_bytes():
    cache = ResponseCache(_Counter(), max_bytes=10)
    assert cache.get_or_build("a", lambda: b"123456") == b"123456"
    assert cache.get_or_build("b", lambda: b"7890") == b"7890"
    assert cache.get_or_build("a", lambda: b"fresh") == b"123456"  # still there: 10 bytes
    cache.get_or_build("c", lambda: b"x")  # 11 bytes: the least recently used goes
    assert cache.get_or_build("b", lambda: b"rebuilt") == b"rebuilt"
    off = ResponseCache(_Counter(), max_bytes=0)
    off.get_or_build("a", lambda: b"1")
    assert off.get_or_build("a", lambda: b"2") == b"2"


class _Counter:
    def value(self):
        return 1


def test_change_counter_moves_on_every_commit_and_on_a_replaced_file(tmp_path):
    path = str(tmp_path / "x.db")
    writer = engines.writer_engine(path)
    migrations.init_db(writer)
    counter = engines.ChangeCounter(path)
    first = counter.value()
    assert counter.value() == first  # reading changes nothing
    with writer.begin() as conn:
        meta.put(conn, "k", "1")
    second = counter.value()
    assert second != first
    engines.close_writer(writer)
    copy = str(tmp_path / "copy.db")
    shutil.copy(path, copy)
    os.replace(copy, path)  # a restore: a new file under the same name
    assert counter.value() != second
    os.remove(path)
    with pytest.raises(OSError):
        counter.value()
    counter.close()


def test_change_counter_connection_cannot_write(tmp_path):
    path = str(tmp_path / "x.db")
    engines.close_writer(_init(path))
    counter = engines.ChangeCounter(path)
    counter.value()
    assert counter._conn is not None
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        counter._conn.execute("CREATE TABLE t (x)")
    counter.close()


def _init(path):
    engine = engines.writer_engine(path)
    migrations.init_db(engine)
    return engine
