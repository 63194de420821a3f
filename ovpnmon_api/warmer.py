"""Bodies kept warm across commits: what was asked lately is answered again right after each
commit, so the first reader after a poll finds its body built.

The response cache (``ovpnmon_api.cache``) forgets every body at each commit: a body is only
valid for the database state it was built from. A dashboard, Grafana or a script asks the same
URLs at about the collector's interval, so without help nearly each of its requests is the first
after a poll and pays the whole cost (``/usage`` of a month for 1,000 clients: ≈ 15 ms against
0.7 ms for serving the body).

The warmer remembers the GET requests the API answered with 200 through its resources (not
``/metrics``, which keeps itself warm, nor static files). When the database's change counter
moves, a thread replays those asked within ``hot_seconds`` (three collector intervals, at least a
minute) through the application itself — the same routing, parameters, token and cache key as
the next real request, so it computes exactly what that request would — most recently asked
first, for at most ``BUDGET_SECONDS`` per state. A request arriving while its body is being built
waits for that build (``ResponseCache``) instead of building it a second time. Replays are not
logged. The thread starts with the first remembered request, stops when none is hot, and ends
with the application.
"""

from __future__ import annotations

import contextlib
import io
import logging
import sqlite3
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from ovpnmon_api.background import ensure_running
from ovpnmon_common.storage.engines import Counter

log = logging.getLogger("ovpnmon.api")

# Set in a replayed request's environ: the access log leaves it out, and it is not remembered.
REPLAY = "ovpnmon.warm"

# What a replay carries over from the request it repeats (HTTP_* headers too): the rest of a
# WSGI environ is the server's, or describes a body a GET does not have.
_KEPT = (
    "SCRIPT_NAME",
    "PATH_INFO",
    "QUERY_STRING",
    "SERVER_NAME",
    "SERVER_PORT",
    "SERVER_PROTOCOL",
    "REMOTE_ADDR",
    "wsgi.url_scheme",
)


# What tells two requests apart for the warmer: what the answer depends on. (Two requests that
# differ only in, say, their User-Agent are one request to answer again.)
_IDENTITY = ("SCRIPT_NAME", "PATH_INFO", "QUERY_STRING", "HTTP_ACCEPT", "HTTP_AUTHORIZATION")


def _replayable(environ: dict[str, Any]) -> dict[str, Any]:
    kept = {k: v for k, v in environ.items() if k in _KEPT or k.startswith("HTTP_")}
    kept["REQUEST_METHOD"] = "GET"  # a HEAD's body is the GET's
    return kept


class Warmer:
    """The requests asked lately, and the thread that answers them again after each commit."""

    WATCH_SECONDS = 0.1  # how often the thread looks at the change counter
    BUDGET_SECONDS = 1.0  # the most it spends on one database state (a tenth of a 10 s interval)
    MAX_REQUESTS = 256  # requests remembered at most (the least recently asked are forgotten)

    def __init__(
        self,
        counter: Counter,
        hot_seconds: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        """``background``: run the thread (tests call ``warm_once`` themselves instead)."""
        self.counter = counter
        self.background = background
        self.hot_seconds = hot_seconds
        self.clock = clock
        self._app: Callable[..., Any] | None = None  # replayed through (``attach``)
        self._lock = threading.Lock()
        self._asked: OrderedDict[Hashable, tuple[float, dict[str, Any]]] = OrderedDict()
        self._version: Hashable = None  # the state the hot requests were last answered for
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.replays = 0  # requests replayed (for the tests)

    def attach(self, app: Callable[..., Any]) -> None:
        """Replay through the WSGI application ``app``. (It owns the warmer too; the thread
        holds the warmer weakly, so the garbage collector ends the pair and then the thread.)"""
        self._app = app

    def remember(self, environ: dict[str, Any]) -> None:
        """Remember a request answered with 200, to answer it again after the next commits."""
        if environ.get(REPLAY):
            return
        kept = _replayable(environ)
        key = tuple(kept.get(name) for name in _IDENTITY)
        with self._lock:
            self._asked[key] = (self.clock(), kept)
            self._asked.move_to_end(key)
            while len(self._asked) > self.MAX_REQUESTS:
                self._asked.popitem(last=False)
        if self._version is None:  # the state this request was answered for
            with contextlib.suppress(OSError, sqlite3.Error):  # then the next request says it
                self._version = self.counter.value()
        self._start()

    def hot(self) -> list[dict[str, Any]]:
        """The requests asked within ``hot_seconds``, most recently asked first."""
        horizon = self.clock() - self.hot_seconds()
        with self._lock:
            return [kept for asked, kept in reversed(self._asked.values()) if asked >= horizon]

    def warm_once(self) -> bool:
        """If the database changed since the last call, answer the hot requests again (within
        the budget). False when none is hot: the thread may stop."""
        requests = self.hot()
        if not requests:
            self._version = None
            return False
        try:
            version = self.counter.value()
        except (OSError, sqlite3.Error):
            return True  # the next request says so, as a 503
        if version == self._version:
            return True
        self._version = version
        deadline = self.clock() + self.BUDGET_SECONDS
        for environ in requests:
            if self.clock() >= deadline:
                break
            self.replay(environ)
        return True

    def replay(self, kept: dict[str, Any]) -> None:
        """Answer one remembered request again, through the application; the body is dropped
        (the response cache keeps it)."""
        app = self._app
        if app is None:
            return
        environ = {
            **kept,
            REPLAY: True,
            "wsgi.input": io.BytesIO(),
            "wsgi.errors": sys.stderr,
            "wsgi.version": (1, 0),
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        try:
            body = app(environ, lambda status, headers, exc_info=None: None)
            try:
                for _ in body:
                    pass
            finally:
                getattr(body, "close", lambda: None)()
        except Exception:  # a replay must never end the thread; the real request will tell
            log.exception("warming %s failed", kept.get("PATH_INFO"))
        self.replays += 1

    def _start(self) -> None:
        if self.background:
            self._thread = ensure_running(self, self._thread, self._start_lock, "response-warmer")
