import datetime
import math
import random

import pytest

from ovpnmon_common.formatting import (
    format_timestamp,
    parse_timestamp,
    stamper,
    to_gb,
    to_mb,
    to_mbps,
)


def test_timestamps_render_in_the_configured_zone():
    assert format_timestamp(0) == "1970-01-01 00:00:00"
    berlin = stamper("Europe/Berlin")  # the API's formatter: the same text, None kept
    assert berlin(1_767_960_000) == berlin(1_767_960_000.7) == "2026-01-09 13:00:00"
    assert berlin(None) is None and berlin(2**63 - 1) == format_timestamp(2**63 - 1)
    assert format_timestamp(1_767_960_000) == "2026-01-09 12:00:00"
    assert format_timestamp(1_767_960_000, "Europe/Berlin") == "2026-01-09 13:00:00"
    assert format_timestamp(1_767_960_000, "America/New_York") == "2026-01-09 07:00:00"


def test_parse_timestamp_round_trips():
    assert parse_timestamp("2026-01-09 12:00:00") == 1_767_960_000
    assert parse_timestamp("2026-01-09") == 1_767_916_800
    assert parse_timestamp("2026-01-09 13:00", "Europe/Berlin") == 1_767_960_000
    assert parse_timestamp("2026-01-09T13:00+01:00", "America/New_York") == 1_767_960_000
    with pytest.raises(ValueError, match="must be YYYY-MM-DD"):
        parse_timestamp("yesterday")


def test_units_are_binary_for_sizes_and_decimal_for_rates():
    assert to_mb(1_048_576) == 1.0
    assert to_mb(524_550_144) == 500.25
    assert to_gb(10 * 2**30) == 10.0
    assert to_gb(2**30 + 2**29) == 1.5
    assert to_mbps(125_000, 1) == 1.0  # 1,000,000 bits in one second
    assert to_mbps(1_875_000, 10) == 1.5
    assert to_mbps(1, 3) == 0.0  # rounds to 3 places


def test_units_round_as_round_does_ties_included():
    """The conversions round in integers or by a checked shortcut (for speed); each answer is
    round()'s, half to even, on values of every size and on exact ties."""
    rng = random.Random(19)
    sizes = [rng.randrange(10 ** rng.randrange(1, 16)) for _ in range(20_000)]
    # exact ties: odd multiples of 1/8 MiB or GiB (0.125, 0.375, ...), to even either way
    sizes += [(2 * k + 1) * 2**17 for k in range(5000)] + [(2 * k + 1) * 2**27 for k in range(5000)]
    sizes += [0, 1, -1, -(2**17), 2**53 - 1]
    for n in sizes:
        assert to_mb(n) == round(n / 2**20, 2), n
        assert to_gb(n) == round(n / 2**30, 2), n
    assert (to_mb(2**17), to_mb(3 * 2**17)) == (0.12, 0.38)
    assert to_mb(1.5 * 2**20) == 1.5  # not an integer: round() itself
    rates = [rng.random() * 10 ** rng.randrange(-6, 12) for _ in range(20_000)]
    rates += [k / 16 for k in range(1, 3000)]  # k * 62.5: exact ties among them
    rates += [1e300, math.inf]
    for bytes_per_second in rates:
        expected = round(bytes_per_second * 8 / 1 / 1_000_000, 3) if bytes_per_second > 0 else 0.0
        assert to_mbps(bytes_per_second, 1) == expected, bytes_per_second
    assert to_mbps(7_812.5, 1) == 0.062  # 0.0625 Mbit/s: half to even, as round() does
    assert to_mbps(23_437.5, 1) == 0.188


@pytest.mark.parametrize("seconds", [0, -5, -0.001])
def test_rates_are_never_infinite_or_negative(seconds):
    rate = to_mbps(10_000, seconds)
    assert rate == 0.0 and math.isfinite(rate)


CYCLE = 146_097 * 86_400  # the Gregorian calendar repeats every 400 years, to the second


def by_cycles(epoch: int) -> str:
    """``epoch`` rendered by datetime after moving it by whole 400-year cycles into its range."""
    cycles = (epoch - 1_000_000_000) // CYCLE
    text = format_timestamp(epoch - cycles * CYCLE)
    year, rest = text.split("-", 1)
    return f"{int(year) + 400 * cycles:04d}-{rest}"


@pytest.mark.parametrize(
    "epoch",
    [300_000_000_000, 253_402_300_800, 2**63 - 1, -62_135_596_801, -(10**15)],
)
def test_times_beyond_the_calendar_render_in_utc_instead_of_failing(epoch):
    expected = by_cycles(epoch)
    assert format_timestamp(epoch) == expected
    assert format_timestamp(epoch, "Europe/Berlin") == expected
    assert format_timestamp(epoch, datetime.timezone.utc) == expected


def test_far_years_render_as_the_calendar_says():
    assert format_timestamp(300_000_000_000).startswith("11476-")
    assert format_timestamp(253_402_300_800) == "10000-01-01 00:00:00"
    assert format_timestamp(253_402_300_799) == "9999-12-31 23:59:59"
    assert format_timestamp(-62_135_596_800) == "0001-01-01 00:00:00"  # four digits, always


def test_the_any_year_calendar_agrees_with_datetime_where_both_work():
    from ovpnmon_common.formatting import _format_utc_any_year

    for epoch in range(-62_135_596_800, 253_402_300_800, 7_777_777_777):
        assert _format_utc_any_year(epoch) == format_timestamp(epoch)
