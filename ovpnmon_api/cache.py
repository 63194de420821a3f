"""Rendered response bodies, kept until the database changes.

Every body the API serves is a function of the request, the committed state of the database and,
for some endpoints, the time (a range's aligned window, a certificate's days left), which the
resources put in the key. The collector is the only writer and commits once per poll, so between
two polls the same request has the same answer: dashboards that several people keep open, or a
script polling faster than the collector, are served from here. The key is paired with the
database's change counter (``engines.change_counter``) and every body is forgotten as soon as the
counter moves, so a body is only ever served for the database state it was built from, or a newer
one. A body is built outside the lock, once: a thread that misses a key another thread is
building for the same state waits for that build (on two cores, building it twice would halve
both), and builds it itself only if that build failed. ``ovpnmon_api.warmer`` builds the bodies
asked for lately right after each commit, through the same path.
"""

from __future__ import annotations

import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from ovpnmon_common.storage.engines import Counter

T = TypeVar("T")


class ResponseCache:
    """Rendered bodies (and small values) by key, for the database state they were built from;
    at most ``max_bytes`` of bodies, least recently used first out."""

    WAIT_SECONDS = 30.0  # the longest a thread waits for another's build of the same key

    def __init__(self, counter: Counter, max_bytes: int) -> None:
        self.counter = counter
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._version: Hashable = None
        self._bodies: OrderedDict[Hashable, tuple[Any, int]] = OrderedDict()
        self._building: dict[Hashable, threading.Event] = {}  # keys being built, this state
        self._size = 0
        self.hits = 0
        self.misses = 0
        self.waits = 0  # misses that waited for another thread's build

    def get_or_build(self, key: Hashable, build: Callable[[], T]) -> T:
        """The value for ``key`` at the database's current state: cached, or ``build()``.
        Values are rendered bodies (bytes, counted by length) or small objects (counted as 1)."""
        if self.max_bytes <= 0:
            return build()
        while True:
            try:
                version = self.counter.value()
            except (OSError, sqlite3.Error):
                return build()  # the database cannot be read: build() says so, in its own words
            with self._lock:
                if version != self._version:
                    self._version = version
                    self._bodies.clear()
                    self._building = {}
                    self._size = 0
                found = self._bodies.get(key)
                if found is not None:
                    self._bodies.move_to_end(key)
                    self.hits += 1
                    return found[0]  # type: ignore[no-any-return]
                pending = self._building.get(key)
                if pending is None:
                    done = self._building[key] = threading.Event()
                    self.misses += 1
                    break
            # Another thread builds this key for this state: wait for it and look again (its
            # body, or a newer state; if that build failed, this thread builds).
            self.waits += 1
            if not pending.wait(self.WAIT_SECONDS):
                return build()
        try:
            value = build()
        except BaseException:
            self._built(key, done, version, None)
            raise
        self._built(key, done, version, value)
        return value

    def _built(self, key: Hashable, done: threading.Event, version: Hashable, value: Any) -> None:
        """Keep ``value`` (None: the build failed) and wake whoever waits for it."""
        with self._lock:
            if self._building.get(key) is done:
                del self._building[key]
            if value is not None and version == self._version and key not in self._bodies:
                size = len(value) if isinstance(value, bytes) else 1
                self._bodies[key] = (value, size)
                self._size += size
                while self._size > self.max_bytes and self._bodies:
                    _, (_, evicted) = self._bodies.popitem(last=False)
                    self._size -= evicted
        done.set()
