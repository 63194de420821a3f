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


def month_start(ts: int) -> int:
    """The start of the calendar month (UTC) holding epoch second ``ts``: the bucket a monthly
    row (``schema.stats_monthly``) is named by."""
    days = ts // DAY
    year, month, _ = civil_from_days(days)
    return _days_from_civil(year, month, 1) * DAY


def next_month(ts: int) -> int:
    """The start of the calendar month (UTC) after the one holding ``ts``."""
    year, month, _ = civil_from_days(ts // DAY)
    year, month = (year + 1, 1) if month == 12 else (year, month + 1)
    return _days_from_civil(year, month, 1) * DAY


def civil_from_days(days: int) -> tuple[int, int, int]:
    """Days since 1970-01-01 as (year, month, day) on the proleptic Gregorian calendar, for any
    year (the civil-from-days algorithm of H. Hinnant, "chrono-Compatible Low-Level Date
    Algorithms"; ``formatting`` renders years past 9999 with it)."""
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    return yoe + era * 400 + (month <= 2), month, day


def _days_from_civil(year: int, month: int, day: int) -> int:
    # the inverse of civil_from_days (Hinnant's days_from_civil)
    year -= month <= 2
    era = year // 400
    yoe = year - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468
