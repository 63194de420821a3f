"""Bodies kept warm across commits: the requests asked lately are answered again after each
commit, so the first reader after a poll is served from the cache, byte for byte what computing
it then gives; and a reader never builds a body another thread is building."""

import logging
import threading
import time

import pytest
from test_cache import URLS, Setup, session

from ovpnmon_api.cache import ResponseCache
from ovpnmon_api.warmer import Warmer
from ovpnmon_common.storage import engines

ASKED = [
    *URLS,
    "/api/v1/usage?period=2026-11",
    "/api/v1/usage?period=2026-11&format=csv",
    "/api/v1/sessions",
    "/api/v1/sessions?active=yes&limit=10",
    "/api/v1/clients/alice/sessions?format=csv",
]


class Monotonic:
    """The warmer's clock, moved by hand."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class Warmed(Setup):
    """``Setup`` (a collector, a cached and an uncached API) with the cached API's warmer driven
    by the test: no thread, its own clock."""

    def __init__(self, tmp_path, tokens=()):
        self.mono = Monotonic()
        super().__init__(tmp_path, tokens, lambda path: self._warmer(path))

    def _warmer(self, path):
        return Warmer(engines.ChangeCounter(path), lambda: 60.0, clock=self.mono, background=False)

    def ask(self, url, **kwargs):
        path, _, query = url.partition("?")
        result = self.cached.simulate_get(path, query_string=query, **kwargs)
        assert result.status_code == 200, (url, result.text)
        return result


@pytest.fixture
def warmed(tmp_path):
    s = Warmed(tmp_path)
    yield s
    s.collector.close()


def test_the_first_reader_after_a_commit_is_served_what_computing_it_gives(warmed):
    warmed.poll(session("alice", 1, 1000, 100), session("bob", 2, 50, 5))
    warmed.poll(session("alice", 1, 3000, 300), session("bob", 2, 60, 6))
    for url in ASKED:
        warmed.ask(url)
    assert warmed.warmer.warm_once()  # nothing changed since they were asked
    assert warmed.warmer.replays == 0

    warmed.poll(session("alice", 1, 9000, 900), session("bob", 2, 70, 7))  # a commit
    assert warmed.warmer.warm_once()
    assert warmed.warmer.replays == len(ASKED)
    misses = warmed.cache.misses
    for url in ASKED:
        cached, fresh = warmed.both(url)
        assert cached == fresh  # the state after the commit, byte for byte
    assert warmed.cache.misses == misses  # every one was built before it was asked
    assert b'"received_bytes":8000' in warmed.both("/api/v1/stats/alice?range=1h")[0]

    assert warmed.warmer.warm_once()  # no commit since: nothing is answered again
    assert warmed.warmer.replays == len(ASKED)


def test_only_what_was_asked_within_the_horizon_is_answered_again(warmed):
    warmed.poll(session("alice", 1, 1000, 100))
    warmed.ask("/api/v1/stats")
    warmed.mono.now += 50
    warmed.ask("/api/v1/clients")
    assert warmed.warmer.warm_once()
    warmed.mono.now += 20  # /stats was asked 70 s ago, /clients 20 s ago
    warmed.poll(session("alice", 1, 2000, 200))
    assert warmed.warmer.warm_once()
    assert warmed.warmer.replays == 1
    misses = warmed.cache.misses
    warmed.ask("/api/v1/clients")
    assert warmed.cache.misses == misses
    warmed.ask("/api/v1/stats")
    assert warmed.cache.misses == misses + 1

    warmed.mono.now += 61  # nothing asked for a minute: the thread may stop
    assert not warmed.warmer.warm_once()


def test_replays_carry_the_token_and_only_answered_requests_are_remembered(tmp_path, caplog):
    warmed = Warmed(tmp_path, tokens=("s3cret",))
    try:
        warmed.poll(session("alice", 1, 1000, 100))
        good = {"Authorization": "Bearer s3cret"}
        warmed.ask("/api/v1/stats", headers=good)
        warmed.cached.simulate_head("/api/v1/clients", headers=good)  # a HEAD: warmed as GET
        refused = warmed.cached.simulate_get("/api/v1/stats/system")
        assert refused.status_code == 401
        missing = warmed.cached.simulate_get("/api/v1/stats/nobody", headers=good)
        assert missing.status_code == 404
        bad = warmed.cached.simulate_get("/api/v1/stats", query_string="range=2h", headers=good)
        assert bad.status_code == 400
        warmed.cached.simulate_get("/api/v1/health")
        warmed.cached.simulate_get("/api/v1/openapi.json")
        warmed.cached.simulate_get("/metrics", headers=good)
        warmed.cached.simulate_get("/", headers=good)
        assert len(warmed.warmer.hot()) == 2

        assert warmed.warmer.warm_once()
        warmed.poll(session("alice", 1, 2000, 200))
        caplog.set_level(logging.INFO, logger="ovpnmon.api.access")
        caplog.clear()
        assert warmed.warmer.warm_once()
        assert warmed.warmer.replays == 2
        assert not [r for r in caplog.records if r.name == "ovpnmon.api.access"]  # not logged
        misses = warmed.cache.misses
        warmed.ask("/api/v1/stats", headers=good)
        warmed.ask("/api/v1/clients", headers=good)
        assert warmed.cache.misses == misses  # the replays were authorized, and built them
        assert warmed.cached.simulate_get("/api/v1/stats").status_code == 401  # still closed
    finally:
        warmed.collector.close()


def test_a_commit_is_warmed_within_its_budget(warmed):
    warmed.poll(session("alice", 1, 1000, 100), session("bob", 2, 50, 5))
    for url in URLS:
        warmed.ask(url)
    assert warmed.warmer.warm_once()
    warmed.poll(session("alice", 1, 2000, 200))
    ticking = iter(range(10_000))
    warmed.warmer.clock = lambda: warmed.mono.now + 0.3 * next(ticking)  # each look: 0.3 s on
    assert warmed.warmer.warm_once()
    assert 0 < warmed.warmer.replays < len(URLS)


def test_the_requests_remembered_are_bounded(warmed):
    warmed.poll(session("alice", 1, 1000, 100))
    for i in range(Warmer.MAX_REQUESTS + 40):
        warmed.ask(f"/api/v1/stats/system?_={i}")  # a cache-buster each time
    hot = warmed.warmer.hot()
    assert len(hot) == Warmer.MAX_REQUESTS
    assert hot[0]["QUERY_STRING"] == f"_={Warmer.MAX_REQUESTS + 39}"  # the latest first
    for agent in ("curl/8", "Mozilla/5.0", "Grafana"):  # the same request to answer again
        warmed.ask("/api/v1/stats/system?_=0", headers={"User-Agent": agent})
    assert len(warmed.warmer.hot()) == Warmer.MAX_REQUESTS
    assert warmed.warmer.hot()[0]["HTTP_USER_AGENT"] == "Grafana"


def test_the_thread_warms_after_a_commit_and_stops_when_nothing_is_asked(tmp_path):
    Warmer.WATCH_SECONDS, watch = 0.01, Warmer.WATCH_SECONDS
    setup = Setup(tmp_path, warmer=lambda path: Warmer(engines.ChangeCounter(path), lambda: 60.0))
    try:
        warmer, cache, client = setup.warmer, setup.cache, setup.cached
        setup.poll(session("alice", 1, 1000, 100))
        assert client.simulate_get("/api/v1/stats").status_code == 200
        setup.poll(session("alice", 1, 5000, 500))
        deadline = time.monotonic() + 30
        while warmer.replays == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert warmer.replays == 1
        misses = cache.misses
        assert client.simulate_get("/api/v1/stats").content == setup.both("/api/v1/stats")[1]
        assert cache.misses == misses

        warmer.hot_seconds = lambda: 0.0  # nothing is hot any more
        deadline = time.monotonic() + 30
        while warmer._thread.is_alive() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert not warmer._thread.is_alive()
    finally:
        Warmer.WATCH_SECONDS = watch
        setup.collector.close()


class _Counter:
    def value(self):
        return 1


def test_a_reader_waits_for_the_build_under_way_instead_of_building_again():
    cache = ResponseCache(_Counter(), max_bytes=1 << 20)
    started, release = threading.Event(), threading.Event()
    builds = []

    def slow():
        builds.append("slow")
        started.set()
        release.wait(10)
        return b"body"

    first = threading.Thread(target=lambda: cache.get_or_build("k", slow))
    first.start()
    assert started.wait(10)
    got = []
    second = threading.Thread(
        target=lambda: got.append(cache.get_or_build("k", lambda: builds.append("again")))
    )
    second.start()
    deadline = time.monotonic() + 10
    while cache.waits == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    assert cache.waits == 1
    release.set()
    first.join(10)
    second.join(10)
    assert got == [b"body"] and builds == ["slow"]


def test_a_reader_builds_itself_when_the_build_it_waited_for_failed():
    cache = ResponseCache(_Counter(), max_bytes=1 << 20)
    started, release = threading.Event(), threading.Event()

    def failing():
        started.set()
        release.wait(10)
        raise RuntimeError("the database went away")

    errors = []

    def first():
        try:
            cache.get_or_build("k", failing)
        except RuntimeError as exc:
            errors.append(str(exc))

    thread = threading.Thread(target=first)
    thread.start()
    assert started.wait(10)
    got = []
    second = threading.Thread(target=lambda: got.append(cache.get_or_build("k", lambda: b"ok")))
    second.start()
    deadline = time.monotonic() + 10
    while cache.waits == 0 and time.monotonic() < deadline:
        time.sleep(0.001)
    release.set()
    thread.join(10)
    second.join(10)
    assert errors == ["the database went away"] and got == [b"ok"]
    assert cache.get_or_build("k", lambda: b"later") == b"ok"  # and kept it
