"""The ``meta`` table: its keys, the collector's status record, and the rollup watermarks.

The collector writes these (every poll: heartbeat, interval, changed source health; prune: how
far each tier has been deleted); the API,
``info``, the dashboard and ``/metrics`` read them with ``read_status``, the one decoder.
Values are text; numbers as decimal, records as JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, bindparam, select

from ovpnmon_common import schema
from ovpnmon_common.storage.statements import Prepared, upsert

SCHEMA_VERSION = "schema_version"
HEARTBEAT = "collector.heartbeat"  # epoch second of the last stored poll
INTERVAL = "collector.interval"  # the configured poll interval, seconds
POLL_SECONDS = "collector.poll_seconds"  # how long the last stored poll took (stored by the next)
CLOSED_SINCE = "collector.closed_since"  # JSON: source -> latest Connected Since of a closed one
CERTIFICATES_SCANNED = "certificates.scanned_at"

_HEALTH = "source.{}.health"  # JSON: {"state", "message", "since", "last_ok"}
_FIRST_WATCHED = "source.{}.first_watched"
_WATERMARK = "rollup.{}.watermark"
_PRUNED = "prune.{}.before"


def health_key(source: str) -> str:
    """The key of ``source``'s health record."""
    return _HEALTH.format(source)


def first_watched_key(source: str) -> str:
    """The key of when ``source`` was first watched."""
    return _FIRST_WATCHED.format(source)


def watermark_key(tier: str) -> str:
    """The key holding the start of the first bucket not yet final in ``tier``."""
    return _WATERMARK.format(tier)


def pruned_key(tier: str) -> str:
    """The key holding the time before which prune has deleted every row of ``tier``."""
    return _PRUNED.format(tier)


def encode_health(health: Mapping[str, Any]) -> str:
    """A source's health record as stored."""
    return json.dumps(health)


@dataclass(frozen=True)
class CollectorStatus:
    """What the collector last said about itself, decoded once."""

    heartbeat: int | None = None
    interval: int | None = None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> health record
    watermarks: dict[str, int] = field(default_factory=dict)  # tier name -> watermark
    pruned: dict[str, int] = field(default_factory=dict)  # tier name -> rows before it deleted
    schema_version: int | None = None
    certificates_scanned_at: int | None = None
    poll_seconds: float | None = None


def _int(value: str | None) -> int | None:
    return int(value) if value else None


def decode(entries: Mapping[str, str]) -> CollectorStatus:
    """The status held in ``entries`` (every row of ``meta``)."""
    sources: dict[str, dict[str, Any]] = {}
    watermarks: dict[str, int] = {}
    pruned: dict[str, int] = {}
    for key, value in entries.items():
        kind, _, rest = key.partition(".")
        name, _, what = rest.rpartition(".")
        if kind == "source" and what == "health":
            sources[name] = json.loads(value)
        elif kind == "rollup" and what == "watermark":
            watermarks[name] = int(value)
        elif kind == "prune" and what == "before":
            pruned[name] = int(value)
    return CollectorStatus(
        heartbeat=_int(entries.get(HEARTBEAT)),
        interval=_int(entries.get(INTERVAL)),
        sources=sources,
        watermarks=watermarks,
        pruned=pruned,
        schema_version=_int(entries.get(SCHEMA_VERSION)),
        certificates_scanned_at=_int(entries.get(CERTIFICATES_SCANNED)),
        poll_seconds=float(entries[POLL_SECONDS]) if entries.get(POLL_SECONDS) else None,
    )


_m = schema.meta
_ALL = Prepared(select(_m.c.key, _m.c.value))
_ONE = Prepared(select(_m.c.value).where(_m.c.key == bindparam("key")))
_WATERMARKS = Prepared(select(_m.c.key, _m.c.value).where(_m.c.key.like(_WATERMARK.format("%"))))


def read_status(conn: Connection) -> CollectorStatus:
    """The collector's status, in one ``SELECT``."""
    return decode(dict(_ALL(conn).all()))


def watermarks(conn: Connection) -> dict[str, int]:
    """Tier name -> watermark, for the tiers that have one."""
    prefix, suffix = _WATERMARK.split("{}")
    return {key[len(prefix) : -len(suffix)]: int(value) for key, value in _WATERMARKS(conn).all()}


def get(conn: Connection, key: str) -> str | None:
    """The value of ``key``, or None."""
    return _ONE(conn, key=key).scalar()


def put(conn: Connection, key: str, value: str) -> None:
    """Set ``key`` to ``value``."""
    put_many(conn, {key: value})


def put_many(conn: Connection, entries: Mapping[str, str]) -> None:
    """Set every key of ``entries`` in one statement."""
    upsert(conn, _m, [{"key": k, "value": v} for k, v in entries.items()], ["key"])


def delete(conn: Connection, keys: list[str]) -> None:
    """Remove ``keys``."""
    conn.execute(_m.delete().where(_m.c.key.in_(keys)))
