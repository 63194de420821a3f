"""Packing: the raw samples of final buckets, moved from one row per poll into one per client.

A poll appends its samples to ``usage_history``, one row per client (about 21 bytes for two
counter values). Once a 15-minute bucket is final in the 15-minute tier, nothing adds to it but
a late poll, and readers rarely need its samples one by one: so the rollup moves the bucket's
rows into ``usage_packed``, one row per client with its samples packed
(``ovpnmon_common.packed``: about 2.5 bytes a counter value) and their sums beside them. The
poll's write stays an append; readers take raw samples from both tables.

Buckets are packed oldest first, one per transaction, resuming after the newest packed one.
Left as rows: the samples at each host's heartbeat (what the API reads as a client's current
rate), and a late poll's rows in a bucket already packed; both stay readable as rows, and
retention deletes them with the rest.
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, Engine, delete, func, select

from ovpnmon_collector.clock import SYSTEM_CLOCK, Clock
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.buckets import align
from ovpnmon_common.storage import engines, statements
from ovpnmon_common.tiers import BY_NAME

log = logging.getLogger("ovpnmon.rollup")

QUARTER = BY_NAME["quarter_hour"]
WIDTH = 15 * 60
u, p, h = schema.usage_history, schema.usage_packed, schema.hosts
COLUMNS = ("bucket", "client_id", "bytes_received", "bytes_sent", "samples", "data")

# the rows left as rows: each host's last stored poll
_HEARTBEATS = select(h.c.heartbeat).where(h.c.heartbeat.is_not(None))


def next_bucket(conn: Connection) -> int | None:
    """The oldest bucket with rows to pack (None: no row after the newest packed bucket)."""
    newest = conn.execute(select(func.max(p.c.bucket))).scalar()
    after = newest + WIDTH if newest is not None else None
    query = select(func.min(u.c.ts)).where(u.c.ts.not_in(_HEARTBEATS))
    if after is not None:
        query = query.where(u.c.ts >= after)
    first = conn.execute(query).scalar()
    return align(first, WIDTH) if first is not None else None


def pack_bucket(conn: Connection, bucket: int) -> int:
    """Move the rows of ``bucket`` (but the heartbeats') into ``usage_packed``, merged with
    whatever it already holds there; returns the rows moved."""
    window = [u.c.ts >= bucket, u.c.ts < bucket + WIDTH, u.c.ts.not_in(_HEARTBEATS)]
    # in key order (ts, client_id): each client's samples come oldest first, no sort
    rows = conn.execute(
        select(u.c.client_id, u.c.ts, u.c.bytes_received, u.c.bytes_sent).where(*window)
    ).all()
    if not rows:
        return 0
    columns: dict[int, tuple[list[int], list[int], list[int]]] = {}
    for client_id, ts, rx, tx in rows:
        found = columns.get(client_id)
        if found is None:
            found = columns[client_id] = ([], [], [])
        found[0].append(ts)
        found[1].append(rx)
        found[2].append(tx)
    there = conn.execute(
        select(p.c.client_id, p.c.data).where(
            p.c.bucket == bucket, p.c.client_id.in_(list(columns))
        )
    ).all()
    for client_id, data in there:  # a bucket packed before (not by this module's own order)
        mine = columns[client_id]
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
    conn.execute(delete(u).where(*window))
    return len(rows)


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


def catch_up(engine: Engine, *, deadline: float | None = None, clock: Clock = SYSTEM_CLOCK) -> int:
    """Pack every bucket before the 15-minute tier's watermark, oldest first, one per
    transaction; with ``deadline`` (a ``clock.monotonic()`` value) stop early, to go on next
    call. Returns the buckets packed."""
    done = 0
    while deadline is None or clock.monotonic() < deadline:
        with engine.begin() as conn:
            engines.hold_tiers(conn, shared=False)  # as a rollup: no poll beside it
            limit = meta.watermarks(conn).get(QUARTER.name)
            bucket = next_bucket(conn)
            if limit is None or bucket is None or bucket >= limit:
                break
            pack_bucket(conn, bucket)
        done += 1
    if done:
        log.debug("packed %d buckets of raw samples", done)
    return done
