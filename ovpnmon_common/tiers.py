"""Which table each rollup tier is, what it is built from, and where its watermark is kept.

Shared by the collector (which builds tiers) and the API (which reads a tier up to its watermark
and the finer data after it, so the bucket in progress is always there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table

from ovpnmon_common import schema
from ovpnmon_common.buckets import DAY, HOUR


@dataclass(frozen=True)
class Rollup:
    name: str  # the Tier name in ovpnmon_common.buckets
    table: Table
    width: int
    source: Table
    finer: str | None  # the tier it is built from (None: raw samples)


ROLLUPS: tuple[Rollup, ...] = (
    Rollup("quarter_hour", schema.stats_15min, 15 * 60, schema.usage_history, None),
    Rollup("hourly", schema.stats_hourly, HOUR, schema.stats_15min, "quarter_hour"),
    Rollup("six_hour", schema.stats_6h, 6 * HOUR, schema.stats_hourly, "hourly"),
    Rollup("daily", schema.stats_daily, DAY, schema.stats_6h, "six_hour"),
    Rollup("global_15min", schema.global_15min, 900, schema.global_history, None),
)

BY_NAME = {rollup.name: rollup for rollup in ROLLUPS}


def sql_align(column: Any, width: Any) -> Any:
    """``buckets.align`` as a SQL expression: the bucket start of each row's time ``column``
    (``width`` is seconds, or a ``bindparam``)."""
    return column - column % width


def watermark_key(tier: str) -> str:
    """The ``meta`` key holding the start of the first bucket not yet final in ``tier``."""
    return f"rollup.{tier}.watermark"
