"""Calendar periods in a time zone (months, ISO weeks, days, from/to) and the edges a usage
question can still be summed between once raw samples are pruned."""

import datetime as dt
import re

import pytest

from ovpnmon_common import formatting, periods
from ovpnmon_common.buckets import DAY, HOUR
from ovpnmon_common.formatting import format_timestamp
from ovpnmon_common.periods import InvalidPeriod, parse_period, parse_time
from ovpnmon_common.planner import InvalidQuery, plan_usage


def utc(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.timezone.utc).timestamp())


@pytest.mark.parametrize(
    "text, tz, start, end",
    [
        ("2026-11", "UTC", "2026-11-01 00:00", "2026-12-01 00:00"),
        ("2026-12", "UTC", "2026-12-01 00:00", "2027-01-01 00:00"),
        ("2026-11", "Europe/Berlin", "2026-10-31 23:00", "2026-11-30 23:00"),
        # October holds the change back to CET: 31 days and one hour
        ("2026-10", "Europe/Berlin", "2026-09-30 22:00", "2026-10-31 23:00"),
        ("2026-03-29", "Europe/Berlin", "2026-03-28 23:00", "2026-03-29 22:00"),  # 23 hours
        ("2026-10-25", "Europe/Berlin", "2026-10-24 22:00", "2026-10-25 23:00"),  # 25 hours
        ("2026-W48", "UTC", "2026-11-23 00:00", "2026-11-30 00:00"),
        ("2026-W53", "UTC", "2026-12-28 00:00", "2027-01-04 00:00"),  # 2026 has 53 ISO weeks
        ("2026-11", "Asia/Kolkata", "2026-10-31 18:30", "2026-11-30 18:30"),
        # Santiago skips midnight when summer time starts: the day starts at 01:00 local
        ("2026-09-06", "America/Santiago", "2026-09-06 04:00", "2026-09-07 03:00"),
    ],
)
def test_periods_are_wall_clock_boundaries_of_the_zone(text, tz, start, end):
    period = parse_period(text, tz)
    assert (period.start, period.end) == (utc(start), utc(end))
    assert period.name == text


@pytest.mark.parametrize(
    "text, message",
    [
        ("2026-13", "month must be 01 to 12"),
        ("2026-W54", "period '2026-W54' is not a date"),
        ("2026-02-30", "period '2026-02-30' is not a date"),
        ("november", "period must be YYYY-MM (a month), YYYY-Www (an ISO week"),
        ("2026-11-01T00:00", "period must be YYYY-MM"),
        ("1969-12", "the year must be 1970 to 9998"),
        ("", "period must be"),
    ],
)
def test_a_period_that_cannot_be_read_names_the_accepted_forms(text, message):
    with pytest.raises(InvalidPeriod, match=re.escape(message)):
        parse_period(text, "UTC")


def test_times_in_a_zone_with_and_without_offsets():
    tz = "Europe/Berlin"
    assert parse_time("2026-11-05", tz, "from") == utc("2026-11-04 23:00")
    assert parse_time("2026-11-05 10:30", tz, "from") == utc("2026-11-05 09:30")
    assert parse_time("2026-11-05T10:30:15", tz, "from") == utc("2026-11-05 09:30:15")
    assert parse_time("2026-11-05T10:30:00Z", tz, "from") == utc("2026-11-05 10:30")
    assert parse_time("2026-11-05 10:30:00-05:00", tz, "from") == utc("2026-11-05 15:30")


def test_a_local_time_a_clock_change_skips_or_repeats_asks_for_the_offset():
    with pytest.raises(InvalidPeriod, match=r"from '2026-03-29 02:30' is skipped in Europe/Berlin"):
        parse_time("2026-03-29 02:30", "Europe/Berlin", "from")
    with pytest.raises(InvalidPeriod, match=r"to '2026-10-25 02:30' happens twice .* give the"):
        parse_time("2026-10-25 02:30", "Europe/Berlin", "to")
    # with the offset it is one instant
    assert parse_time("2026-10-25 02:30+01:00", "Europe/Berlin", "to") == utc("2026-10-25 01:30")


@pytest.mark.parametrize(
    "text, message",
    [
        ("yesterday", "from must be YYYY-MM-DD"),
        ("2026-11-05 25:00", "is not a time"),
        ("2026-11-05Z", "an offset needs a time of day"),
        ("2026-11-05 10:00+24:00", "the offset must be"),
    ],
)
def test_a_time_that_cannot_be_read_names_the_accepted_forms(text, message):
    with pytest.raises(InvalidPeriod, match=message):
        parse_time(text, "UTC", "from")


@pytest.mark.parametrize(
    "text",
    [
        "2026-11-05",
        "2026-11-05 10:00",
        "2026-11-05T10:00:30",
        "2026-11-05 10:00Z",
        "2026-11-05T10:00+05:30",
    ],
)
def test_the_published_time_pattern_admits_every_form_the_parser_reads(text):
    parse_time(text, "UTC", "from")
    assert re.fullmatch(formatting.TIME_PATTERN, text)


@pytest.mark.parametrize("text", ["yesterday", "2026-11-05Z", "2026-11-05 10", "1 Nov 2026"])
def test_the_published_time_pattern_refuses_what_the_parser_refuses(text):
    with pytest.raises(InvalidPeriod):
        parse_time(text, "UTC", "from")
    assert re.fullmatch(formatting.TIME_PATTERN, text) is None


@pytest.mark.parametrize(
    "text, ok",
    [
        ("2026-11", True),
        ("2026-W48", True),
        ("2026-11-05", True),
        ("2026-1", False),
        ("2026-w48", False),
        ("November", False),
    ],
)
def test_the_published_period_pattern_matches_the_parser(text, ok):
    assert bool(re.fullmatch(periods.PERIOD_PATTERN, text)) == ok
    if ok:
        parse_period(text, "UTC")
    else:
        with pytest.raises(InvalidPeriod):
            parse_period(text, "UTC")


def test_from_must_come_before_to_and_to_defaults_to_now():
    now = utc("2026-11-20 12:00")
    assert periods.between("2026-11-01", None, "UTC", now).end == now
    with pytest.raises(
        InvalidPeriod, match=r"from \(2026-11-02\) must be before to \(2026-11-01\)"
    ):
        periods.between("2026-11-02", "2026-11-01", "UTC", now)
    with pytest.raises(InvalidPeriod, match="give period"):
        periods.between(None, "2026-11-01", "UTC", now)


def test_the_month_of_a_moment_is_its_local_month():
    # 23:30 UTC on 30 November is already December in Berlin
    assert periods.month_of(utc("2026-11-30 23:30"), "Europe/Berlin").name == "2026-12"
    assert periods.month_of(utc("2026-11-30 23:30"), "UTC").name == "2026-11"


def describe(epoch: int) -> str:
    return format_timestamp(epoch, "UTC")


def test_usage_edges_are_exact_where_raw_samples_still_hold_them():
    start, end = utc("2026-11-01 00:00:07"), utc("2026-11-05 13:17:00")
    planned = plan_usage(start, end, {}, describe)
    assert planned.exact and (planned.start, planned.end) == (start, end)


def test_usage_edges_move_to_the_next_bucket_of_the_finest_tier_still_holding_them():
    pruned = {
        "raw": utc("2026-11-10 00:00"),
        "quarter_hour": utc("2026-11-10 00:00"),
        "hourly": utc("2026-10-01 00:00"),
        "six_hour": utc("2026-06-01 00:00"),
    }
    # Berlin's November starts 23:00 UTC: whole hours, still exact from the hourly tier
    november = parse_period("2026-11", "Europe/Berlin")
    planned = plan_usage(november.start, november.end, pruned, describe)
    assert planned.exact and planned.edges[0].tier.name == "hourly"
    assert planned.edges[1].tier.name == "raw"
    # Kolkata's starts at 18:30 UTC: the hourly tier rounds it to 19:00
    kolkata = parse_period("2026-11", "Asia/Kolkata")
    planned = plan_usage(kolkata.start, kolkata.end, pruned, describe)
    assert not planned.exact
    first = planned.edges[0]
    assert (first.name, first.tier.name, first.used) == ("from", "hourly", utc("2026-10-31 19:00"))
    assert not planned.edges[1].rounded
    # before the hourly tier's data, the 6-hour one: to the next 6-hour bucket
    september = parse_period("2026-09", "Asia/Kolkata")
    planned = plan_usage(september.start, september.end, pruned, describe)
    assert planned.edges[0].used == utc("2026-09-01 00:00")  # 18:30 -> the next 00:00
    assert planned.edges[0].tier.name == "six_hour"
    assert planned.edges[1].used == utc("2026-10-01 00:00")  # 30 Sep 18:30 -> 1 Oct 00:00
    assert planned.edges[1].tier.name == "six_hour"


def test_usage_before_every_tier_or_inside_one_bucket_is_refused():
    pruned = {"raw": 100 * DAY, "quarter_hour": 100 * DAY, "hourly": 90 * DAY}
    pruned |= {"six_hour": 60 * DAY, "daily": 50 * DAY}
    with pytest.raises(InvalidQuery, match="traffic before 1970-02-20 00:00:00 is no longer held"):
        plan_usage(40 * DAY, 70 * DAY, pruned, describe)
    with pytest.raises(InvalidQuery, match="lies inside one daily bucket"):
        plan_usage(55 * DAY + HOUR, 55 * DAY + 2 * HOUR, pruned, describe)
