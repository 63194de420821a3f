"""One client's raw samples of one 15-minute bucket, packed: how closed buckets are kept.

A poll appends one row per client to ``usage_history`` (cheap: the rows land at the end of a
time-first key), and a row costs about 21 bytes on disk for two counter values. Once a bucket
is final in the 15-minute tier, the collector moves its rows into ``usage_packed``: one row per
client and bucket, holding that client's samples in one value (``ovpnmon_collector.pack``).

The value: a format byte (1), then zlib (deflate) of three columns of little-endian signed
64-bit integers, each stored as its 8 byte planes one after the other (all the lowest bytes,
then all the second bytes, ...): the seconds from the previous sample (the first from the
bucket's start), bytes received, bytes sent. The high planes of small numbers are zeros,
which deflate takes to almost nothing: about 2.5 bytes a counter value on the demo world's
traffic, against about 10.5 as rows. Packing and unpacking are slicing and zlib, C speed.
"""

from __future__ import annotations

import operator
import sys
import zlib
from array import array
from bisect import bisect_left
from collections.abc import Sequence
from itertools import accumulate

from sqlalchemy import Connection, select

from ovpnmon_common import schema
from ovpnmon_common.tiers import BY_NAME

FORMAT = 1
# the buckets samples are packed in: the 15-minute tier's (final there first)
WIDTH = BY_NAME["quarter_hour"].width or 0
_WIDTH = 8  # bytes of one value ("q")
_LITTLE = sys.byteorder == "little"


def _planes(column: array[int]) -> bytes:
    if not _LITTLE:  # pragma: no cover - every platform ovpnmon runs on is little-endian today
        column.byteswap()
    data = column.tobytes()
    return b"".join(data[i::_WIDTH] for i in range(_WIDTH))


def _column(planes: bytes, count: int) -> array[int]:
    data = bytearray(count * _WIDTH)
    for i in range(_WIDTH):
        data[i::_WIDTH] = planes[i * count : (i + 1) * count]
    column = array("q")
    column.frombytes(data)
    if not _LITTLE:  # pragma: no cover
        column.byteswap()
    return column


def pack(bucket: int, samples: Sequence[tuple[int, int, int]]) -> bytes:
    """``samples`` (ts, bytes received, bytes sent), oldest first, all at or after ``bucket``
    -> one value for ``usage_packed.data``."""
    return pack_columns(
        bucket, [s[0] for s in samples], [s[1] for s in samples], [s[2] for s in samples]
    )


def pack_columns(
    bucket: int, times: Sequence[int], received: Sequence[int], sent: Sequence[int]
) -> bytes:
    """``pack`` of the samples given as three columns (the collector's hot path)."""
    steps = array("q", map(operator.sub, times, [bucket, *times[:-1]]))
    if steps and min(steps) < 0:
        at = next(i for i, step in enumerate(steps) if step < 0)
        before = times[at - 1] if at else bucket
        raise ValueError(f"samples out of order or before the bucket: {times[at]} after {before}")
    body = _planes(steps) + _planes(array("q", received)) + _planes(array("q", sent))
    return bytes([FORMAT]) + zlib.compress(body)  # level 6: 9 is 1 % smaller and 30 % slower


def unpack(bucket: int, value: bytes) -> list[tuple[int, int, int]]:
    """The samples ``pack(bucket, ...)`` packed, oldest first."""
    return list(zip(*_columns(bucket, value), strict=True))


def window(
    bucket: int, value: bytes, start: int, end: int
) -> tuple[list[int], array[int], array[int]]:
    """The samples of ``value`` in ``[start, end)`` as three columns: times, bytes received,
    bytes sent (found by bisection; a reader sums a slice at C speed)."""
    times, received, sent = _columns(bucket, value)
    low, high = bisect_left(times, start), bisect_left(times, end)
    return times[low:high], received[low:high], sent[low:high]


def window_sums(bucket: int, value: bytes, start: int, end: int) -> tuple[int, int]:
    """(bytes received, bytes sent) of the samples of ``value`` in ``[start, end)``."""
    _, received, sent = window(bucket, value, start, end)
    return sum(received), sum(sent)


def _columns(bucket: int, value: bytes) -> tuple[list[int], array[int], array[int]]:
    if not value or value[0] != FORMAT:
        raise ValueError(f"packed samples of an unknown format ({value[:1].hex() or 'empty'})")
    body = zlib.decompress(value[1:])
    if len(body) % (3 * _WIDTH):
        raise ValueError(f"packed samples of {len(body)} bytes: not three whole columns")
    count = len(body) // (3 * _WIDTH)
    size = count * _WIDTH
    steps, received, sent = (_column(body[i * size : (i + 1) * size], count) for i in range(3))
    return list(accumulate(steps, initial=bucket))[1:], received, sent


def raw_samples(conn: Connection) -> list[tuple[int, int, int, int]]:
    """Every raw sample in the database, as rows or packed: (client id, ts, bytes received,
    bytes sent), by client and time. For checks and tools; readers take ranges."""
    u, p = schema.usage_history, schema.usage_packed
    found = [
        tuple(row)
        for row in conn.execute(select(u.c.client_id, u.c.ts, u.c.bytes_received, u.c.bytes_sent))
    ]
    for client_id, bucket, data in conn.execute(select(p.c.client_id, p.c.bucket, p.c.data)):
        found.extend((client_id, ts, rx, tx) for ts, rx, tx in unpack(bucket, data))
    return sorted(found)  # type: ignore[arg-type]
