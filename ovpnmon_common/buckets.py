"""Time buckets: the range/resolution table and the exact bucket sequence for any query.

This is the single place both processes take bucket maths from. Buckets are aligned to multiples of
their width since the Unix epoch (UTC) and are named by their start; every series ends with the
bucket that holds ``now`` (the bucket in progress).
"""

from __future__ import annotations

import builtins
import math
from dataclasses import dataclass

from ovpnmon_common.config import RetentionConfig

MINUTE = 60
HOUR = 3600
DAY = 86400

MAX_POINTS = 10_000

RANGES: dict[str, int] = {
    "1h": HOUR,
    "3h": 3 * HOUR,
    "6h": 6 * HOUR,
    "12h": 12 * HOUR,
    "24h": DAY,
    "7d": 7 * DAY,
    "30d": 30 * DAY,
    "90d": 90 * DAY,
    "1y": 365 * DAY,
}

RESOLUTIONS = ("auto", "raw", "5min", "hourly", "6h", "daily")


@dataclass(frozen=True)
class Tier:
    """Where a series is read from: a table family, its bucket width and its retention key."""

    name: str
    width: int | None  # None: raw samples, one per poll
    retention_key: str

    def retention_days(self, retention: RetentionConfig) -> int:
        return int(getattr(retention, self.retention_key))


RAW = Tier("raw", None, "raw_days")
HOURLY = Tier("hourly", HOUR, "hourly_days")
SIX_HOUR = Tier("six_hour", 6 * HOUR, "six_hour_days")
DAILY = Tier("daily", DAY, "daily_days")
# The whole-server tier behind /analytics; 15 minutes divides 105 and 450 minutes exactly.
GLOBAL_15MIN = Tier("global_15min", 15 * MINUTE, "hourly_days")


# resolution name -> (tier, bucket width); None width means samples as stored
_EXPLICIT: dict[str, tuple[Tier, int | None]] = {
    "raw": (RAW, None),
    "5min": (RAW, 5 * MINUTE),
    "hourly": (HOURLY, HOUR),
    "6h": (SIX_HOUR, 6 * HOUR),
    "daily": (DAILY, DAY),
}

# range -> (tier, bucket width) chosen by resolution=auto (api-v1.md plus product.md)
AUTO: dict[str, tuple[Tier, int]] = {
    "1h": (RAW, 30),
    "3h": (RAW, MINUTE),
    "6h": (RAW, 2 * MINUTE),
    "12h": (RAW, 5 * MINUTE),
    "24h": (RAW, 15 * MINUTE),
    "7d": (HOURLY, HOUR),
    "30d": (SIX_HOUR, 6 * HOUR),
    "90d": (SIX_HOUR, 6 * HOUR),
    "1y": (DAILY, DAY),
}

ANALYTICS_POINTS = 96
# /analytics range -> bucket width: 15 min, 105 min, 450 min, always 96 points
ANALYTICS: dict[str, int] = {"24h": 900, "7d": 6300, "30d": 27000}

_TABLE_LABELS = {
    "raw": "usage_history_hires",
    "hourly": "stats_hourly",
    "six_hour": "stats_6h",
    "daily": "stats_daily",
    "global_15min": "global_15min",
}


class InvalidQuery(ValueError):
    """A range/resolution combination that cannot be answered; the message says what is allowed."""


@dataclass(frozen=True)
class Series:
    """The buckets of one answer: ``count`` buckets of ``step`` seconds from ``start``.

    For raw samples (``step is None``) it is the half-open window ``[start, end)`` instead.
    """

    range: str
    tier: Tier
    step: int | None
    start: int
    end: int
    count: int | None

    @property
    def label(self) -> str:
        """The name dashboards see as ``meta.resolution_used``."""
        if self.step is None:
            return "usage_history"
        return _TABLE_LABELS[self.tier.name]

    def starts(self) -> builtins.range:  # the field `range` shadows the builtin here
        """Every bucket start, oldest first."""
        if self.step is None:
            raise ValueError("raw samples have no buckets")
        return range(self.start, self.end, self.step)


def align(ts: int, width: int) -> int:
    """The start of the ``width``-second bucket holding epoch second ``ts``."""
    return ts - ts % width


def align_up(ts: int, width: int) -> int:
    """The first bucket boundary at or after ``ts``."""
    return -(-ts // width) * width


def bucketed(range_name: str, tier: Tier, step: int, now: int) -> Series:
    """The ``step``-wide buckets covering ``range_name``, ending with the one holding ``now``."""
    count = max(1, math.ceil(RANGES[range_name] / step))
    last = align(now, step)
    return Series(range_name, tier, step, last - (count - 1) * step, last + step, count)


def check_range(value: str | None) -> str:
    """Validate a ``range`` parameter (default ``24h`` when absent; an empty value is an error)."""
    if value is None:
        return "24h"
    if value not in RANGES:
        raise InvalidQuery(f"range must be one of {', '.join(RANGES)}; got {value!r}")
    return value


def check_resolution(value: str | None) -> str:
    """Validate a ``resolution`` parameter (default ``auto`` when absent)."""
    if value is None:
        return "auto"
    if value not in RESOLUTIONS:
        raise InvalidQuery(f"resolution must be one of {', '.join(RESOLUTIONS)}; got {value!r}")
    return value


def plan(
    range_name: str | None,
    resolution: str | None,
    now: int,
    retention: RetentionConfig,
    raw_interval: int,
) -> Series:
    """Choose the tier and buckets for a per-client history query.

    ``raw_interval`` is the collector's poll interval: it sizes a ``raw`` answer. Raises
    ``InvalidQuery`` for unknown values, for more than ``MAX_POINTS`` points and for a range longer
    than the chosen tier keeps.
    """
    range_name = check_range(range_name)
    resolution = check_resolution(resolution)
    step: int | None
    tier, step = AUTO[range_name] if resolution == "auto" else _EXPLICIT[resolution]
    seconds = RANGES[range_name]

    keep_days = tier.retention_days(retention)
    if keep_days and seconds > keep_days * DAY:
        longest = [name for name, secs in RANGES.items() if secs <= keep_days * DAY]
        allowed = f"use a range up to {longest[-1]}" if longest else "no range fits"
        raise InvalidQuery(
            f"range {range_name} with resolution {resolution} needs {tier.name} data older "
            "than the "
            f"{keep_days} days that [retention] {tier.retention_key} keeps: {allowed}, "
            "or a coarser resolution (hourly, 6h, daily)"
        )

    if step is None:
        points = math.ceil(seconds / max(1, raw_interval))
        if points > MAX_POINTS:
            raise InvalidQuery(
                f"range {range_name} with resolution raw would return about {points} samples "
                f"(one per {raw_interval} s); at most {MAX_POINTS} are served: "
                "choose a shorter range or resolution 5min"
            )
        return Series(range_name, tier, None, now - seconds, now + 1, None)

    series = bucketed(range_name, tier, step, now)
    assert series.count is not None
    if series.count > MAX_POINTS:
        raise InvalidQuery(
            f"range {range_name} with resolution {resolution} would return {series.count} points; "
            f"at most {MAX_POINTS} are served: choose a shorter range or a coarser resolution"
        )
    return series


def plan_analytics(range_name: str | None, now: int, retention: RetentionConfig) -> Series:
    """The 96 whole-server buckets of ``/analytics`` (15 min, 105 min or 450 min wide)."""
    if range_name is None:
        range_name = "24h"
    if range_name not in ANALYTICS:
        raise InvalidQuery(f"range must be one of {', '.join(ANALYTICS)}; got {range_name!r}")
    keep_days = GLOBAL_15MIN.retention_days(retention)
    if keep_days and RANGES[range_name] > keep_days * DAY:
        raise InvalidQuery(
            f"range {range_name} needs more than the {keep_days} days of whole-server history "
            f"that [retention] {GLOBAL_15MIN.retention_key} keeps"
        )
    return bucketed(range_name, GLOBAL_15MIN, ANALYTICS[range_name], now)
