"""The range/resolution table: which tier and which buckets answer a history query; and which
edges a usage period (``ovpnmon_common.periods``) can still be summed between.

Every series ends with the bucket that holds ``now`` (the bucket in progress). The planner
chooses the tier that is actually read, once; ``Series.label`` is what the API reports as
``meta.resolution_used`` (the contract's names, mapped in ``docs/api.md``).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable
from dataclasses import dataclass

from ovpnmon_common.buckets import DAY, HOUR, MINUTE, align, align_up
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.tiers import BY_NAME, GLOBAL_15MIN, RAW, TIERS, Tier

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

_HOURLY, _SIX_HOUR, _DAILY = BY_NAME["hourly"], BY_NAME["six_hour"], BY_NAME["daily"]

# resolution name -> (tier, bucket width); None width means samples as stored
_EXPLICIT: dict[str, tuple[Tier, int | None]] = {
    "raw": (RAW, None),
    "5min": (RAW, 5 * MINUTE),
    "hourly": (_HOURLY, HOUR),
    "6h": (_SIX_HOUR, 6 * HOUR),
    "daily": (_DAILY, DAY),
}

# range -> (tier, bucket width) chosen by resolution=auto (api-v1.md plus product.md)
AUTO: dict[str, tuple[Tier, int]] = {
    "1h": (RAW, 30),
    "3h": (RAW, MINUTE),
    "6h": (RAW, 2 * MINUTE),
    "12h": (RAW, 5 * MINUTE),
    "24h": (RAW, 15 * MINUTE),
    "7d": (_HOURLY, HOUR),
    "30d": (_SIX_HOUR, 6 * HOUR),
    "90d": (_SIX_HOUR, 6 * HOUR),
    "1y": (_DAILY, DAY),
}

# Every meta.resolution_used a per-client history can report: raw samples as stored, then each
# per-client tier's label (the contract's table names; the 15-minute tier reports as raw samples
# in buckets, which its sums exactly are).
LABELS: tuple[str, ...] = (
    "usage_history",
    *dict.fromkeys(tier.label for tier in TIERS if tier.per_client),
)

ANALYTICS_POINTS = 96
# /analytics range -> bucket width: 15 min, 105 min, 450 min, always 96 points
ANALYTICS: dict[str, int] = {"24h": 900, "7d": 6300, "30d": 27000}


class InvalidQuery(ValueError):
    """A range/resolution combination that cannot be answered; the message says what is allowed."""


@dataclass(frozen=True)
class Series:
    """The buckets of one answer: ``count`` buckets of ``step`` seconds from ``start``, read
    from ``tier`` (up to its watermark, the finer tiers after it).

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
        return "usage_history" if self.step is None else self.tier.label

    def starts(self) -> builtins.range:  # the field `range` shadows the builtin here
        """Every bucket start, oldest first."""
        if self.step is None:
            raise ValueError("raw samples have no buckets")
        return range(self.start, self.end, self.step)


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


def _coarsest(tier: Tier, step: int, retention: RetentionConfig) -> Tier:
    """The coarsest tier built (through finer ones) from ``tier`` whose buckets divide ``step``
    and that keeps at least as long: its sums are exactly those of ``tier`` over each bucket
    (raw samples in 15-minute buckets are the 15-minute tier)."""

    def keeps(t: Tier) -> float:
        return t.retention_days(retention) or float("inf")  # 0: forever

    best = tier
    for coarser in TIERS:
        width = coarser.width
        if width is None or step % width or width <= (best.width or 0):
            continue
        if keeps(coarser) < keeps(tier):
            continue
        below = coarser
        while below.built_from is not None and below is not tier:
            below = BY_NAME[below.built_from]
        if below is tier:
            best = coarser
    return best


def plan(
    range_name: str | None,
    resolution: str | None,
    now: int,
    retention: RetentionConfig,
    raw_interval: int | None = None,
) -> Series:
    """Choose the tier and buckets for a per-client history query.

    Raises ``InvalidQuery`` for unknown values, for more than ``MAX_POINTS`` points and for a
    range longer than the chosen tier keeps. ``raw_interval`` is the collector's poll interval:
    it sizes a ``raw`` answer (``check_raw_points``; left out, the caller checks later).
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
        series = Series(range_name, tier, None, now - seconds, now + 1, None)
        if raw_interval is not None:
            check_raw_points(series, raw_interval)
        return series

    series = bucketed(range_name, _coarsest(tier, step, retention), step, now)
    assert series.count is not None
    if series.count > MAX_POINTS:
        raise InvalidQuery(
            f"range {range_name} with resolution {resolution} would return {series.count} points; "
            f"at most {MAX_POINTS} are served: choose a shorter range or a coarser resolution"
        )
    return series


def check_raw_points(series: Series, raw_interval: int) -> None:
    """Raise ``InvalidQuery`` if raw samples, one per ``raw_interval`` seconds, over ``series``
    would be more than ``MAX_POINTS``; bucketed series pass."""
    if series.step is not None:
        return
    points = math.ceil(RANGES[series.range] / max(1, raw_interval))
    if points > MAX_POINTS:
        raise InvalidQuery(
            f"range {series.range} with resolution raw would return about {points} samples "
            f"(one per {raw_interval} s); at most {MAX_POINTS} are served: "
            "choose a shorter range or resolution 5min"
        )


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


# Per-client tiers finest first: where a period's edge is looked for (raw samples first).
USAGE_TIERS: tuple[Tier, ...] = (
    RAW,
    *sorted((t for t in TIERS if t.per_client and t.width is not None), key=lambda t: t.width or 0),
)


@dataclass(frozen=True)
class Edge:
    """One edge of a usage period: the time asked, the time used (the first bucket start at or
    after it in ``tier``, the finest tier still holding it; the time itself in raw samples)."""

    name: str  # "from" or "to"
    asked: int
    used: int
    tier: Tier

    @property
    def rounded(self) -> bool:
        return self.used != self.asked


@dataclass(frozen=True)
class UsagePlan:
    """What a usage question sums: every raw sample and bucket whose timestamp lies in
    ``[start, end)``, the edges rounded where raw samples are gone (``Edge``)."""

    edges: tuple[Edge, Edge]

    @property
    def start(self) -> int:
        return self.edges[0].used

    @property
    def end(self) -> int:
        return self.edges[1].used

    @property
    def exact(self) -> bool:
        return not any(edge.rounded for edge in self.edges)


def _edge(name: str, when: int, pruned: dict[str, int]) -> Edge | None:
    for tier in USAGE_TIERS:
        used = when if tier.width is None else align_up(when, tier.width)
        if used >= pruned.get(tier.name, used):
            return Edge(name, when, used, tier)
    return None


def plan_usage(
    start: int, end: int, pruned: dict[str, int], describe: Callable[[int], str]
) -> UsagePlan:
    """The edges of a usage period ``[start, end)`` given how far prune has deleted each tier
    (``CollectorStatus.pruned``): each edge stays where raw samples still hold it, or moves to
    the first bucket start at or after it in the finest tier that does — the rule by which a
    bucket, like a sample, counts in the period its timestamp lies in, so adjacent periods
    never share a byte. ``describe`` renders a time for the message of an edge no tier holds."""
    edges = _edge("from", start, pruned), _edge("to", end, pruned)
    if edges[0] is None or edges[1] is None:
        coarsest = USAGE_TIERS[-1]
        raise InvalidQuery(
            f"traffic before {describe(pruned[coarsest.name])} is no longer held by any tier "
            f"([retention] {coarsest.retention_key}); the period starts {describe(start)}: "
            "ask for a later period"
        )
    plan = UsagePlan((edges[0], edges[1]))
    if plan.end <= plan.start:
        raise InvalidQuery(
            f"the period {describe(start)} to {describe(end)} lies inside one "
            f"{plan.edges[0].tier.name} bucket, the finest data still held there "
            "(raw samples are gone): ask for a longer period"
        )
    return plan
