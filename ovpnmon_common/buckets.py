"""Bucket maths: aligning epoch seconds to bucket boundaries, the one place both processes
take it from.

Buckets are aligned to multiples of their width since the Unix epoch (UTC) and are named by their
start. Which buckets a query gets is ``ovpnmon_common.planner``'s business; which table holds
them, ``ovpnmon_common.tiers``'.
"""

from __future__ import annotations

MINUTE = 60
HOUR = 3600
DAY = 86400


def align(ts: int, width: int) -> int:
    """The start of the ``width``-second bucket holding epoch second ``ts``."""
    return ts - ts % width


def align_up(ts: int, width: int) -> int:
    """The first bucket boundary at or after ``ts``."""
    return -(-ts // width) * width
