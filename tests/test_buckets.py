import datetime as dt
import itertools

import pytest

from ovpnmon_common.buckets import align, align_up, month_start, next_month
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.planner import (
    ANALYTICS_POINTS,
    AUTO,
    MAX_POINTS,
    RANGES,
    RESOLUTIONS,
    InvalidQuery,
    plan,
    plan_analytics,
)

NOW = 1_795_717_523  # 2026-11-26 18:25:23 UTC, mid-bucket for every width
KEEP_ALL = RetentionConfig(raw_days=0, hourly_days=0, six_hour_days=0, daily_days=0)
DEFAULT = RetentionConfig()


# api-v1.md's table, plus product.md's 90d and 1y rows
AUTO_EXPECTED = {
    "1h": ("raw", 30, 120),
    "3h": ("raw", 60, 180),
    "6h": ("raw", 120, 180),
    "12h": ("raw", 300, 144),
    "24h": ("quarter_hour", 900, 96),  # raw samples in 15-minute buckets: summed already
    "7d": ("hourly", 3600, 168),
    "30d": ("six_hour", 21600, 120),
    "90d": ("six_hour", 21600, 360),
    "1y": ("daily", 86400, 365),
}


@pytest.mark.parametrize(("range_name", "expected"), AUTO_EXPECTED.items())
def test_auto_follows_the_contract_table(range_name, expected):
    series = plan(range_name, "auto", NOW, DEFAULT, 10)
    assert (series.tier.name, series.step, series.count) == expected
    starts = list(series.starts())
    assert len(starts) == series.count
    # aligned to the epoch, consecutive, and ending with the bucket in progress
    assert all(start % series.step == 0 for start in starts)
    assert starts == list(range(starts[0], starts[-1] + 1, series.step))
    assert starts[-1] <= NOW < starts[-1] + series.step
    assert series.end == starts[-1] + series.step


def test_auto_table_covers_every_range():
    assert set(AUTO) == set(RANGES) == set(AUTO_EXPECTED)


def test_daily_buckets_start_at_midnight_utc():
    series = plan("1y", "daily", NOW, DEFAULT, 10)
    assert series.start % 86400 == 0
    assert series.starts()[-1] == 1_795_651_200  # 2026-11-26 00:00:00 UTC


def test_explicit_resolutions_and_labels():
    assert plan("24h", "5min", NOW, DEFAULT, 10).count == 288
    assert plan("7d", "hourly", NOW, DEFAULT, 10).label == "stats_hourly"
    assert plan("30d", "6h", NOW, DEFAULT, 10).label == "stats_6h"
    assert plan("1y", "daily", NOW, DEFAULT, 10).label == "stats_daily"
    assert plan("1h", "auto", NOW, DEFAULT, 10).label == "usage_history_hires"
    raw = plan("1h", "raw", NOW, DEFAULT, 10)
    assert raw.step is None and raw.label == "usage_history"
    assert (raw.start, raw.end) == (NOW - 3600, NOW + 1)
    with pytest.raises(ValueError):
        raw.starts()


def test_a_range_shorter_than_the_bucket_is_one_bucket():
    series = plan("1h", "daily", NOW, DEFAULT, 10)
    assert series.count == 1 and series.start == align(NOW, 86400)


@pytest.mark.parametrize(("range_name", "resolution"), list(itertools.product(RANGES, RESOLUTIONS)))
def test_every_pair_either_plans_or_says_what_is_allowed(range_name, resolution):
    try:
        series = plan(range_name, resolution, NOW, DEFAULT, 10)
    except InvalidQuery as exc:
        message = str(exc)
        assert range_name in message
        assert "retention" in message or f"at most {MAX_POINTS}" in message
        return
    if series.step is not None:
        assert 1 <= series.count <= MAX_POINTS
        assert len(series.starts()) == series.count


@pytest.mark.parametrize(
    ("range_name", "resolution", "fragment"),
    [
        ("7d", "5min", "raw_days"),  # raw keeps 3 days
        ("7d", "raw", "raw_days"),
        ("30d", "auto", None),  # fine: 6h tier keeps 400 days
        ("1y", "hourly", "hourly_days"),  # 90 days of hourly
        ("1y", "6h", None),  # 400 days of 6h
    ],
)
def test_retention_limits(range_name, resolution, fragment):
    if fragment is None:
        plan(range_name, resolution, NOW, DEFAULT, 10)
        return
    with pytest.raises(InvalidQuery, match=fragment):
        plan(range_name, resolution, NOW, DEFAULT, 10)


def test_more_than_max_points_is_refused():
    assert plan("1y", "hourly", NOW, KEEP_ALL, 10).count == 8760
    with pytest.raises(InvalidQuery, match="105120 points; at most 10000"):
        plan("1y", "5min", NOW, KEEP_ALL, 10)
    with pytest.raises(InvalidQuery, match="about 86400 samples"):
        plan("24h", "raw", NOW, KEEP_ALL, 1)
    assert plan("24h", "raw", NOW, KEEP_ALL, 10).step is None  # 8640 samples: allowed


@pytest.mark.parametrize(
    ("value", "param"),
    [("2h", "range"), ("24H", "range"), ("", "range"), (None, None), ("1d", "range")],
)
def test_unknown_range(value, param):
    if param is None:
        assert plan(value, None, NOW, DEFAULT, 10).range == "24h"  # absent means the default
        return
    with pytest.raises(
        InvalidQuery, match=r"range must be one of 1h, 3h, 6h, 12h, 24h, 7d, 30d, 90d, 1y; got"
    ):
        plan(value, "auto", NOW, DEFAULT, 10)


def test_unknown_resolution():
    with pytest.raises(
        InvalidQuery,
        match="resolution must be one of auto, raw, 5min, hourly, 6h, daily; got '1min'",
    ):
        plan("1h", "1min", NOW, DEFAULT, 10)


@pytest.mark.parametrize(("range_name", "step"), [("24h", 900), ("7d", 6300), ("30d", 27000)])
def test_analytics_is_always_96_points(range_name, step):
    series = plan_analytics(range_name, NOW, DEFAULT)
    assert series.count == ANALYTICS_POINTS == 96
    assert series.step == step and step % 900 == 0  # whole 15-minute buckets
    starts = list(series.starts())
    assert len(starts) == 96 and starts[-1] <= NOW < series.end
    assert all(s % step == 0 for s in starts)


def test_analytics_rejects_other_ranges_and_short_retention():
    with pytest.raises(InvalidQuery, match="range must be one of 24h, 7d, 30d; got '1y'"):
        plan_analytics("1y", NOW, DEFAULT)
    with pytest.raises(InvalidQuery, match="hourly_days"):
        plan_analytics("30d", NOW, RetentionConfig(hourly_days=7))
    assert plan_analytics(None, NOW, DEFAULT).range == "24h"
    with pytest.raises(InvalidQuery, match="got ''"):
        plan_analytics("", NOW, DEFAULT)


def test_align_and_align_up():
    assert align(905, 900) == 900 and align_up(905, 900) == 1800
    assert align(900, 900) == align_up(900, 900) == 900
    assert align_up(0, 86400) == 0 and align_up(1, 86400) == 86400


@pytest.mark.parametrize(
    "when",
    [
        0,  # 1970-01-01
        -1,  # the last second of 1969
        951_868_800,  # 2000-03-01, after a leap day of a year divisible by 400
        4_107_542_399,  # 2100-02-28 23:59:59: 2100 has no leap day
        1_830_124_800,  # 2027-12-30
        253_402_300_799,  # 9999-12-31 23:59:59
    ],
)
def test_calendar_months_in_utc_match_the_datetime_module(when):
    moment = dt.datetime.fromtimestamp(when, dt.timezone.utc)
    first = moment.replace(day=1, hour=0, minute=0, second=0)
    assert month_start(when) == int(first.timestamp())
    if moment.year < 9999 or moment.month < 12:
        following = first.replace(year=first.year + first.month // 12, month=first.month % 12 + 1)
        assert next_month(when) == int(following.timestamp())
    assert month_start(month_start(when)) == month_start(when)
    assert month_start(next_month(when) - 1) == month_start(when)
