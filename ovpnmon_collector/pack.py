"""Packing: the raw samples of final buckets, moved from one row per poll into one per client.

A poll appends its samples to ``usage_history``, one row per client (about 21 bytes for two
counter values). Once a 15-minute bucket is final in the 15-minute tier, nothing adds to it but
a late poll, and readers rarely need its samples one by one: so the collector (the daemon's
packing job, and ``ovpnmon-collector rollup``) moves the bucket's rows into ``usage_packed``,
one row per client with its samples packed (``ovpnmon_common.packed``: about 2.5 bytes a
counter value) and their sums beside them. The
poll's write stays an append; readers take raw samples from both tables.

Buckets are packed oldest first, a slice of the clients per transaction (as wide as keeps the
transaction under ``SLICE_SECONDS``), resuming where ``meta`` key ``pack.raw.next`` says.
Left as rows: the samples at each host's heartbeat (what the API reads as a client's current
rate), and a late poll's rows in a bucket already packed; both stay readable as rows, and
retention deletes them with the rest.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from itertools import groupby
from operator import itemgetter
from typing import Any

from sqlalchemy import Connection, Engine, delete, func, select

from ovpnmon_collector.clock import SYSTEM_CLOCK, Clock
from ovpnmon_collector.slices import SLICE_SECONDS
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.buckets import align
from ovpnmon_common.storage import engines, statements
from ovpnmon_common.tiers import BY_NAME

log = logging.getLogger("ovpnmon.rollup")

QUARTER = BY_NAME["quarter_hour"]
u, p, h, g = schema.usage_history, schema.usage_packed, schema.hosts, schema.global_history
COLUMNS = ("bucket", "client_id", "bytes_received", "bytes_sent", "samples", "data")

# the rows left as rows: each host's last stored poll
_HEARTBEATS = select(h.c.heartbeat).where(h.c.heartbeat.is_not(None))
CURSOR = meta.PACKED  # where packing goes on
_CLIENT = itemgetter(0)


def _window(bucket: int, after: int, upto: int) -> list[Any]:
    """The rows of ``bucket`` of the clients ``after < id <= upto`` (but the heartbeats'): one
    (ts, client_id) key range per poll time of the bucket, so a slice of the clients reads only
    its own rows. (A row without its poll's whole-server row is left as a row.)"""
    times = select(g.c.ts).where(g.c.ts >= bucket, g.c.ts < bucket + packed.WIDTH)
    return [
        u.c.ts.in_(times),
        u.c.client_id > after,
        u.c.client_id <= upto,
        u.c.ts.not_in(_HEARTBEATS),
    ]


def pack_clients(conn: Connection, bucket: int, after: int, upto: int) -> int:
    """Move the rows of ``bucket`` of the clients ``after < id <= upto`` (but the heartbeats')
    into ``usage_packed``, merged with whatever it already holds there; returns the rows
    moved."""
    window = _window(bucket, after, upto)
    rows = statements.plain_rows(
        conn.execute(
            select(u.c.client_id, u.c.ts, u.c.bytes_received, u.c.bytes_sent)
            .where(*window)
            .order_by(u.c.ts, u.c.client_id)  # the key's order: SQLite reads it without a sort
        )
    )
    if not rows:
        return 0
    rows.sort(key=_CLIENT)  # stable: each client's samples stay oldest first
    columns: dict[int, tuple[Sequence[int], Sequence[int], Sequence[int]]] = {
        client_id: _transposed(group) for client_id, group in groupby(rows, _CLIENT)
    }
    there = conn.execute(
        select(p.c.client_id, p.c.data).where(
            p.c.bucket == bucket, p.c.client_id > after, p.c.client_id <= upto
        )
    ).all()
    for client_id, data in there:  # packed before (a copy, or a cursor set back): merged
        mine = columns.get(client_id, ([], [], []))
        merged = _merged(packed.unpack(bucket, data), list(zip(*mine, strict=True)))
        columns[client_id] = (
            [s[0] for s in merged],
            [s[1] for s in merged],
            [s[2] for s in merged],
        )
    out = [
        (bucket, cid, sum(rx), sum(tx), len(ts), packed.pack_columns(bucket, ts, rx, tx))
        for cid, (ts, rx, tx) in columns.items()
    ]
    statements.upsert_tuples(conn, p, COLUMNS, out, ["bucket", "client_id"])
    conn.execute(delete(u).where(*window))  # the rows read: the same transaction
    return len(rows)


def _transposed(
    rows: Iterable[tuple[Any, ...]],
) -> tuple[Sequence[int], Sequence[int], Sequence[int]]:
    """One client's rows (client id, ts, bytes received, bytes sent) as three columns: times,
    bytes received, bytes sent (``zip`` transposes them at C speed)."""
    _, times, received, sent = zip(*rows, strict=True)
    return times, received, sent


def _after(conn: Connection, ts: int | None) -> int | None:
    """The oldest bucket with a row (but the heartbeats') at or after ``ts`` (any: None)."""
    query = select(func.min(u.c.ts)).where(u.c.ts.not_in(_HEARTBEATS))
    if ts is not None:
        query = query.where(u.c.ts >= ts)
    first = conn.execute(query).scalar()
    return align(first, packed.WIDTH) if first is not None else None


def _merged(
    one: list[tuple[int, int, int]], other: list[tuple[int, int, int]]
) -> list[tuple[int, int, int]]:
    """Two lists of samples as one, oldest first; two at the same second are one, summed."""
    sums: dict[int, list[int]] = {}
    for ts, rx, tx in (*one, *other):
        entry = sums.setdefault(ts, [0, 0])
        entry[0] += rx
        entry[1] += tx
    return [(ts, rx, tx) for ts, (rx, tx) in sorted(sums.items())]


def catch_up(
    engine: Engine,
    *,
    deadline: float | None = None,
    clock: Clock = SYSTEM_CLOCK,
    width: int = 64,
) -> int:
    """Pack every bucket before the 15-minute tier's watermark, oldest first, a slice of its
    clients per transaction (the slice widens while a transaction stays under
    ``SLICE_SECONDS``, so a poll never waits long); with ``deadline`` (a ``clock.monotonic()``
    value) stop early, to go on next call. ``width``: the first slice's, in client ids.
    Returns the buckets finished."""
    done = 0
    while deadline is None or clock.monotonic() < deadline:
        began = time.perf_counter()
        with engine.begin() as conn:
            engines.hold_tiers(conn, shared=False)  # as a rollup: no poll beside it
            limit = meta.watermarks(conn).get(QUARTER.name)
            stored = meta.get(conn, CURSOR)
            if stored is not None:
                bucket, after = map(int, stored.split())
            else:
                first = _after(conn, None)
                if first is None:
                    break
                bucket, after = first, 0
            if limit is None or bucket >= limit:
                break
            last = conn.execute(select(func.max(schema.clients.c.id))).scalar() or 0
            upto = min(after + width, last)
            pack_clients(conn, bucket, after, upto)
            if upto >= last:  # the bucket is done: on to the next with a row (or to the limit)
                following = _after(conn, bucket + packed.WIDTH)
                bucket, upto = (following if following is not None else limit), 0
                done += 1
            meta.put(conn, CURSOR, f"{bucket} {upto}")
        took = time.perf_counter() - began
        if took < SLICE_SECONDS / 2:
            width *= 2
        elif took > SLICE_SECONDS and width > 1:
            width //= 2
    if done:
        log.debug("packed %d buckets of raw samples", done)
    return done
