"""The tier registry: every table that holds traffic over time, described once.

A tier is a table of byte counts over time: the raw samples each poll writes (one row per
client per poll, and one whole-server row), and the rollups built from them, each from the
next finer tier. Rollup, retention, ``info``, the API's planner and its OpenAPI document all
read this registry; adding a tier is one entry here plus a schema migration.

Each rollup has a watermark (``ovpnmon_common.meta.watermark_key``): its buckets before it are
final. Readers take a tier up to its watermark and the finer tier after it, so every series
includes the bucket in progress.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import Column, Table

from ovpnmon_common import schema
from ovpnmon_common.buckets import DAY, HOUR, MINUTE
from ovpnmon_common.config import RetentionConfig


@dataclass(frozen=True)
class Tier:
    """One table of traffic over time and how it relates to the others."""

    name: str
    table: Table
    time_column: str  # the column saying when a row is from: "ts" (raw) or "bucket"
    width: int | None  # bucket width in seconds; None for raw samples (one row per poll)
    built_from: str | None  # the tier it is rolled up from; None: written by every poll
    retention_key: str  # the [retention] setting that says how many days it keeps
    per_client: bool  # False: the whole server
    label: str  # what the API reports as meta.resolution_used when it reads this tier
    # raw samples only: the table their final buckets are packed into (``ovpnmon_collector.pack``),
    # keyed by ``bucket``; the tier's data is both tables' rows
    packed: Table | None = None
    # a rollup also sums the bucket in progress into the table, up to its open mark
    # (``ovpnmon_common.meta.open_until``), so readers of it take only what comes after the mark
    # from the finer tiers: the 15-minute tier its raw samples after every poll, the daily tier
    # its final 15-minute buckets as each closes (``ovpnmon_collector.rollup.sum_open``)
    sums_open: bool = False
    # where that bucket in progress is summed, when not in ``table`` (``in_progress``)
    open_table: Table | None = None

    @property
    def time(self) -> Column[Any]:
        return self.table.c[self.time_column]

    @property
    def raw(self) -> bool:
        """True for raw samples (no buckets: one row per poll)."""
        return self.width is None

    def retention_days(self, retention: RetentionConfig) -> int:
        """How many days ``retention`` keeps of this tier (0: forever)."""
        return int(getattr(retention, self.retention_key))


TIERS: tuple[Tier, ...] = (
    # The contract has one name for "raw samples in buckets"; 15-minute sums are exactly that.
    Tier(
        "raw",
        schema.usage_history,
        "ts",
        None,
        None,
        "raw_days",
        True,
        "usage_history_hires",
        packed=schema.usage_packed,
    ),
    Tier(
        "quarter_hour",
        schema.stats_15min,
        "bucket",
        15 * MINUTE,
        "raw",
        "raw_days",
        True,
        "usage_history_hires",
        sums_open=True,
        open_table=schema.stats_15min_open,
    ),
    Tier(
        "hourly",
        schema.stats_hourly,
        "bucket",
        HOUR,
        "quarter_hour",
        "hourly_days",
        True,
        "stats_hourly",
    ),
    Tier(
        "six_hour", schema.stats_6h, "bucket", 6 * HOUR, "hourly", "six_hour_days", True, "stats_6h"
    ),
    # today is one row a client up to the 15-minute watermark (its months' rows hold it too)
    Tier(
        "daily",
        schema.stats_daily,
        "bucket",
        DAY,
        "six_hour",
        "daily_days",
        True,
        "stats_daily",
        sums_open=True,
    ),
    Tier(
        "global_raw",
        schema.global_history,
        "ts",
        None,
        None,
        "raw_days",
        False,
        "global_history",
    ),
    # behind /analytics: 15 minutes divides its 105- and 450-minute buckets exactly
    Tier(
        "global_15min",
        schema.global_15min,
        "bucket",
        15 * MINUTE,
        "global_raw",
        "hourly_days",
        False,
        "global_15min",
    ),
)

BY_NAME: dict[str, Tier] = {tier.name: tier for tier in TIERS}

# Calendar months (UTC), each client's sums of its days, kept equal to ``daily`` by the database
# (``schema.stats_monthly``'s triggers): not built by a rollup and never pruned itself (pruning
# days takes them from their months), so not one of ``TIERS``. ``/usage`` and the top tens read
# the whole months of a range here (``ovpnmon_api.read.series``). Its width is the longest
# month's; its buckets start on the 1st at 00:00 UTC (``buckets.month_start``).
MONTHLY = Tier(
    "monthly",
    schema.stats_monthly,
    "bucket",
    31 * DAY,
    None,
    "daily_days",
    True,
    "stats_monthly",
)

# The rollups, each after the tier it is built from: the order they are brought up to date in.
ROLLUPS: tuple[Tier, ...] = tuple(tier for tier in TIERS if tier.built_from is not None)

RAW = BY_NAME["raw"]
GLOBAL_15MIN = BY_NAME["global_15min"]


# Each tier whose bucket in progress has a table of its own, as a tier of that table (its rows
# are ``tier``'s, of that one bucket): what readers read the bucket from and writers sum it into.
OPEN: dict[str, Tier] = {
    tier.name: replace(tier, name=f"{tier.name}_open", table=tier.open_table, open_table=None)
    for tier in TIERS
    if tier.open_table is not None
}


def in_progress(tier: Tier) -> Tier:
    """``tier`` as the table its bucket in progress is summed into (``OPEN``, or itself)."""
    return OPEN.get(tier.name, tier)


def source_of(tier: Tier) -> Tier:
    """The tier ``tier`` is rolled up from."""
    if tier.built_from is None:
        raise ValueError(f"tier {tier.name} is written by polls, not built from another")
    return BY_NAME[tier.built_from]


def built_on(tier: Tier) -> Tier | None:
    """The tier rolled up from ``tier`` (its watermark bounds what retention may delete)."""
    return next((t for t in TIERS if t.built_from == tier.name), None)


def sql_align(column: Any, width: Any) -> Any:
    """``buckets.align`` as a SQL expression: the bucket start of each row's time ``column``
    (``width`` is seconds, or a ``bindparam``)."""
    return column - column % width
