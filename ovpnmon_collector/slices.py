"""Short transactions for long jobs: rollup and retention work through a range in spans that
widen while each stays quick, so a poll never waits long for the write lock.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from sqlalchemy import Connection, func, select

from ovpnmon_common.tiers import Tier

# Longest a rollup or prune transaction holds the write lock: a poll waits at most this long.
SLICE_SECONDS = 0.05


def spans(start: int, limit: int, first: int, most: int, quick: float) -> Iterator[tuple[int, int]]:
    """``[start, limit)`` as consecutive ``(start, end)`` spans, the first ``first`` seconds
    wide; each span that the caller handled in under ``quick`` seconds (measured between one
    ``next`` and the following) doubles the next one, up to ``most``."""
    span = first
    while start < limit:
        end = min(limit, start + span)
        began = time.perf_counter()
        yield start, end
        if time.perf_counter() - began < quick:
            span = min(span * 2, most)
        start = end


def oldest(conn: Connection, tier: Tier) -> int | None:
    """The time of ``tier``'s oldest row (None when it is empty); of raw samples, packed or
    not, the start of the oldest packed bucket counts as its oldest sample."""
    first = conn.execute(select(func.min(tier.time))).scalar()
    if tier.packed is None:
        return first
    bucket = conn.execute(select(func.min(tier.packed.c.bucket))).scalar()
    return min((t for t in (first, bucket) if t is not None), default=None)
