"""The collectors' status: the ``meta`` table's keys (schema version, rollup watermarks, how far
prune deleted each tier) and what each host's collector says of itself and its sources (the
``hosts`` and ``sources`` tables).

The collectors write these (every poll: its host's heartbeat, interval, changed source health;
rollup and prune: watermarks and how far each tier has been deleted); the API, ``info``, the
dashboard and ``/metrics`` read them with ``read_status``, the one decoder. ``meta`` values are
text; numbers as decimal; health records are JSON.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BigInteger,
    Connection,
    Float,
    Integer,
    Text,
    bindparam,
    cast,
    literal_column,
    null,
    select,
    union_all,
    update,
)

from ovpnmon_common import packed, schema
from ovpnmon_common.storage.statements import Prepared, upsert

SCHEMA_VERSION = "schema_version"

_WATERMARK = "rollup.{}.watermark"
# How far the bucket in progress at a tier's watermark is summed in its table (``open_until``)
_OPEN = "rollup.{}.open"
_PRUNED = "prune.{}.before"
# Where packing raw samples goes on (``ovpnmon_collector.pack``): "BUCKET CLIENT_ID", every raw
# sample of an older bucket, and of that bucket up to that client id, is packed (or kept a row).
PACKED = "pack.raw.next"


def packed_before(value: str) -> int:
    """The time before which ``PACKED``'s ``value`` says raw samples may be packed."""
    bucket, client_id = map(int, value.split())
    return bucket + (packed.WIDTH if client_id else 0)


def watermark_key(tier: str) -> str:
    """The key holding the start of the first bucket not yet final in ``tier``."""
    return _WATERMARK.format(tier)


def open_key(tier: str) -> str:
    """The key holding the time up to which the rollup summed the samples of ``tier``'s bucket
    in progress (the one at its watermark) into its table."""
    return _OPEN.format(tier)


def open_until(watermark: int | None, mark: int | None, width: int) -> int | None:
    """Where a tier's bucket in progress is summed up to, given its ``watermark``, open
    ``mark`` and bucket ``width``: the samples of that bucket before it are in the tier's row
    of the bucket, the later ones are not. None when there is no mark, or it is from an older
    bucket (since made final: the row then holds the whole bucket, and the next is not begun)."""
    if watermark is None or mark is None or not watermark < mark <= watermark + width:
        return None
    return mark


def pruned_key(tier: str) -> str:
    """The key holding the time before which prune has deleted every row of ``tier``."""
    return _PRUNED.format(tier)


def encode_health(health: Mapping[str, Any]) -> str:
    """A source's health record as stored."""
    return json.dumps(health)


def decode_health(stored: str) -> dict[str, Any]:
    """A source's health record as ``encode_health`` stored it."""
    return dict(json.loads(stored))


@dataclass(frozen=True)
class HostStatus:
    """What one collector (a host of the fleet) last said about itself and its sources."""

    id: int
    name: str
    heartbeat: int | None = None  # the epoch second of its last stored poll
    interval: int | None = None  # its configured poll interval
    poll_seconds: float | None = None  # how long its last stored poll took
    certificates_scanned_at: int | None = None
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> health record


@dataclass(frozen=True)
class CollectorStatus:
    """What the collectors last said about themselves, decoded once.

    ``hosts`` by name. The properties speak for the fleet: the newest heartbeat, and the
    sources of every host (by their own names with one host, as ``host/source`` with several:
    two hosts may both call a source ``udp``)."""

    hosts: dict[str, HostStatus] = field(default_factory=dict)
    watermarks: dict[str, int] = field(default_factory=dict)  # tier name -> watermark
    opened: dict[str, int] = field(default_factory=dict)  # tier name -> open mark (``open_key``)
    pruned: dict[str, int] = field(default_factory=dict)  # tier name -> rows before it deleted
    schema_version: int | None = None
    packed_before: int = 0  # raw samples before it may be packed (``PACKED``); after: rows only

    def open_until(self, tier: str, width: int) -> int | None:
        """Where the bucket in progress of ``tier`` (``width`` seconds) is summed up to in its
        table (``open_until``), or None."""
        return open_until(self.watermarks.get(tier), self.opened.get(tier), width)

    @property
    def heartbeat(self) -> int | None:
        """The newest stored poll of any host (None: none yet)."""
        return max((h.heartbeat for h in self.hosts.values() if h.heartbeat), default=None)

    @property
    def interval(self) -> int | None:
        """The longest configured interval of any host."""
        return max((h.interval for h in self.hosts.values() if h.interval), default=None)

    @property
    def poll_seconds(self) -> float | None:
        """How long the slowest host's last stored poll took."""
        found = [h.poll_seconds for h in self.hosts.values() if h.poll_seconds is not None]
        return max(found) if found else None

    @property
    def certificates_scanned_at(self) -> int | None:
        found = [h.certificates_scanned_at for h in self.hosts.values()]
        return max((x for x in found if x is not None), default=None)

    @property
    def sources(self) -> dict[str, dict[str, Any]]:
        """Every source's health record, by ``source_name``."""
        return {
            self.source_name(host.id, name): record
            for host in self.hosts.values()
            for name, record in host.sources.items()
        }

    def source_name(self, host_id: int, source: str) -> str:
        """How a source of host ``host_id`` is named for the fleet: by its own name while there
        is one host, as ``host/source`` with several."""
        if len(self.hosts) <= 1:
            return source
        host = next((h.name for h in self.hosts.values() if h.id == host_id), str(host_id))
        return f"{host}/{source}"

    def heartbeats(self) -> dict[int, int]:
        """Host id -> its heartbeat, for the hosts that have stored a poll."""
        return {h.id: h.heartbeat for h in self.hosts.values() if h.heartbeat is not None}

    def host_id(self, name: str) -> int | None:
        """The id of the host called ``name``, or None."""
        host = self.hosts.get(name)
        return host.id if host is not None else None


def _int(value: str | None) -> int | None:
    return int(value) if value else None


# The three tables' rows in one statement (one round trip on PostgreSQL, where every request
# starts by reading them): (kind, id, name, text, heartbeat, interval, poll_seconds,
# certificates_scanned_at) -- a meta row is (META, -, key, value), a host row the host's columns,
# a sources row (SOURCE, host id, source name, health record).
META, HOST, SOURCE = 0, 1, 2
_m, _h, _s = schema.meta, schema.hosts, schema.sources


def _none(type_: Any) -> Any:
    return cast(null(), type_)


_STATUS = Prepared(
    union_all(
        select(
            literal_column(str(META)).label("kind"),
            _none(Integer).label("id"),
            _m.c.key.label("name"),
            _m.c.value.label("text"),
            _none(BigInteger).label("heartbeat"),
            _none(Integer).label("interval"),
            _none(Float).label("poll_seconds"),
            _none(BigInteger).label("certificates_scanned_at"),
        ),
        select(
            literal_column(str(HOST)),
            _h.c.id,
            _h.c.name,
            _none(Text),
            _h.c.heartbeat,
            _h.c.interval,
            _h.c.poll_seconds,
            _h.c.certificates_scanned_at,
        ),
        select(
            literal_column(str(SOURCE)),
            _s.c.host_id,
            _s.c.name,
            _s.c.health,
            _none(BigInteger),
            _none(Integer),
            _none(Float),
            _none(BigInteger),
        ).where(_s.c.health.is_not(None)),
    )
)
_ONE = Prepared(select(_m.c.value).where(_m.c.key == bindparam("key")))
_ROLLUP_MARKS = Prepared(select(_m.c.key, _m.c.value).where(_m.c.key.like("rollup.%")))


def _parts(key: str) -> tuple[str, str, str]:
    """A tier's key (``rollup.<tier>.watermark``, ``prune.<tier>.before``, ...) as (kind, tier,
    what); other keys give a tier of "" or a "what" that none of these has."""
    kind, _, rest = key.partition(".")
    name, _, what = rest.rpartition(".")
    return kind, name, what


def read_status(conn: Connection) -> CollectorStatus:
    """The collectors' status: ``meta``, ``hosts`` and ``sources``, read in one statement."""
    return decode(_STATUS(conn).all())


def decode(rows: Sequence[Any]) -> CollectorStatus:
    """The status held in ``rows`` (as ``read_status``'s statement returns them)."""
    watermarks: dict[str, int] = {}
    opened: dict[str, int] = {}
    pruned: dict[str, int] = {}
    version: int | None = None
    packed = 0
    hosts: list[Any] = []
    health: dict[int, dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row.kind == META:
            kind, name, what = _parts(row.name)
            if kind == "rollup" and what == "watermark":
                watermarks[name] = int(row.text)
            elif kind == "rollup" and what == "open":
                opened[name] = int(row.text)
            elif kind == "prune" and what == "before":
                pruned[name] = int(row.text)
            elif row.name == SCHEMA_VERSION:
                version = _int(row.text)
            elif row.name == PACKED:
                packed = packed_before(row.text)
        elif row.kind == HOST:
            hosts.append(row)
        else:
            health.setdefault(row.id, {})[row.name] = decode_health(row.text)
    return CollectorStatus(
        hosts={
            row.name: HostStatus(
                id=row.id,
                name=row.name,
                heartbeat=row.heartbeat,
                interval=row.interval,
                poll_seconds=row.poll_seconds,
                certificates_scanned_at=row.certificates_scanned_at,
                sources=dict(sorted(health.get(row.id, {}).items())),
            )
            for row in sorted(hosts, key=lambda row: row.name)
        },
        watermarks=watermarks,
        opened=opened,
        pruned=pruned,
        schema_version=version,
        packed_before=packed,
    )


def watermarks(conn: Connection) -> dict[str, int]:
    """Tier name -> watermark, for the tiers that have one."""
    return rollup_marks(conn)[0]


def rollup_marks(conn: Connection) -> tuple[dict[str, int], dict[str, int]]:
    """(tier name -> watermark, tier name -> open mark), in one statement: what a poll reads
    to know which tiers it is late for (``ovpnmon_collector.rollup.late_tiers``)."""
    marks: dict[str, dict[str, int]] = {"watermark": {}, "open": {}}
    for key, value in _ROLLUP_MARKS(conn).all():
        _, name, what = _parts(key)
        if what in marks:
            marks[what][name] = int(value)
    return marks["watermark"], marks["open"]


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


# --- what one collector says of itself: its row of ``hosts`` and its rows of ``sources`` -------

_HOST_ID = Prepared(select(_h.c.id).where(_h.c.name == bindparam("name")))


def register_host(conn: Connection, name: str, now: int) -> int:
    """The id of the host called ``name``, added (first seen ``now``) if it is new."""
    found = _HOST_ID(conn, name=name).scalar()
    if found is None:
        row = {"name": name, "first_seen": now}
        upsert(conn, _h, [row], ["name"], merge={"first_seen": "keep"})
        found = _HOST_ID(conn, name=name).scalar_one()
    return int(found)


def put_host(conn: Connection, host_id: int, **values: Any) -> None:
    """Set columns of the host's row (heartbeat, interval, poll_seconds, ...)."""
    conn.execute(update(_h).where(_h.c.id == host_id).values(**values))


def put_sources(conn: Connection, host_id: int, column: str, values: Mapping[str, Any]) -> None:
    """Set ``column`` of the host's sources named in ``values`` (added if new)."""
    rows = [{"host_id": host_id, "name": name, column: value} for name, value in values.items()]
    upsert(conn, _s, rows, ["host_id", "name"])


def source_values(conn: Connection, host_id: int, column: str) -> dict[str, Any]:
    """Source name -> ``column`` of the host's sources where it is set."""
    query = select(_s.c.name, _s.c[column]).where(
        _s.c.host_id == host_id, _s.c[column].is_not(None)
    )
    return dict(conn.execute(query).all())


def delete_sources(conn: Connection, host_id: int, names: Sequence[str]) -> None:
    """Forget the host's sources named ``names`` (no longer configured)."""
    conn.execute(_s.delete().where(_s.c.host_id == host_id, _s.c.name.in_(list(names))))
