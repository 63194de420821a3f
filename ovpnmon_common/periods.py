"""Calendar periods: a month, an ISO week, a day, or from/to, in a time zone, as UTC epoch seconds.

``/usage`` and quotas ask for traffic over calendar periods ("November", "week 48"), which are
wall-clock boundaries of ``[api] timezone``: a day in Europe/Berlin lasts 23 or 25 hours when the
clocks change, and a month starts at 23:00 or 22:00 UTC. Every period is half-open,
``[start, end)``; the one rule that assigns traffic to it (a raw sample or a bucket counts where
its timestamp lies) is ``ovpnmon_common.planner.plan_usage``'s.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from ovpnmon_common.formatting import check_year, midnight, parse_timestamp, timezone
from ovpnmon_common.planner import InvalidQuery

FORMS = "YYYY-MM (a month), YYYY-Www (an ISO week, Monday to Sunday) or YYYY-MM-DD (a day)"
# the forms as a regular expression, also published in the OpenAPI document
PERIOD_PATTERN = r"^\d{4}-(\d{2}|W\d{2}|\d{2}-\d{2})$"

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_WEEK = re.compile(r"(\d{4})-W(\d{2})")
_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")


class InvalidPeriod(InvalidQuery):
    """A period that cannot be read; the message names the accepted forms."""


@dataclass(frozen=True)
class Period:
    """``[start, end)`` in epoch seconds; ``name`` as it was asked (``2026-11``, ``2026-W48``,
    ``2026-11-05``) or None for from/to; ``kind`` is month, week, day or range."""

    kind: str
    name: str | None
    start: int
    end: int


def month(year: int, number: int, tz: str) -> Period:
    """Calendar month ``number`` of ``year`` in ``tz``."""
    following = dt.date(year + number // 12, number % 12 + 1, 1)
    start, end = midnight(dt.date(year, number, 1), tz), midnight(following, tz)
    return Period("month", f"{year:04d}-{number:02d}", start, end)


def month_of(epoch: int, tz: str) -> Period:
    """The calendar month in ``tz`` that holds ``epoch`` (a quota's current period)."""
    local = dt.datetime.fromtimestamp(epoch, timezone(tz))
    return month(local.year, local.month, tz)


def parse_period(text: str, tz: str) -> Period:
    """A ``period`` parameter: a month, an ISO week or a day, in ``tz``."""
    value = text.strip()
    try:
        if m := _MONTH.fullmatch(value):
            year, number = int(m[1]), int(m[2])
            check_year(year)
            if not 1 <= number <= 12:
                raise ValueError("month must be 01 to 12")
            return month(year, number, tz)
        if m := _WEEK.fullmatch(value):
            year, week = int(m[1]), int(m[2])
            check_year(year)
            monday = dt.date.fromisocalendar(year, week, 1)
            start = midnight(monday, tz)
            return Period("week", value, start, midnight(monday + dt.timedelta(days=7), tz))
        if m := _DAY.fullmatch(value):
            day = dt.date(int(m[1]), int(m[2]), int(m[3]))
            check_year(day.year)
            end = midnight(day + dt.timedelta(days=1), tz)
            return Period("day", value, midnight(day, tz), end)
    except ValueError as exc:
        raise InvalidPeriod(f"period {text!r} is not a date: {exc}") from None
    raise InvalidPeriod(f"period must be {FORMS}; got {text!r}")


def parse_time(text: str, tz: str, name: str) -> int:
    """A ``from``/``to`` parameter in epoch seconds (``formatting.parse_timestamp``'s forms and
    rules); ``name`` leads the message of a value that cannot be read."""
    try:
        return parse_timestamp(text, tz)
    except ValueError as exc:
        raise InvalidPeriod(f"{name} {exc}") from None


def bounds(
    start_text: str | None, end_text: str | None, tz: str, now: int | None = None
) -> tuple[int | None, int | None]:
    """``from`` and ``to`` (None where not given; ``to`` then ``now``), ``from`` before ``to``."""
    start = parse_time(start_text, tz, "from") if start_text is not None else None
    end = parse_time(end_text, tz, "to") if end_text is not None else now
    if start is not None and end is not None and start >= end:
        raise InvalidPeriod(
            f"from ({start_text}) must be before to ({end_text if end_text is not None else 'now'})"
        )
    return start, end


def between(start_text: str | None, end_text: str | None, tz: str, now: int) -> Period:
    """``from``/``to`` as a period: ``to`` defaults to now; ``from`` is required."""
    if start_text is None:
        raise InvalidPeriod(f"give period ({FORMS}) or from (and optionally to)")
    start, end = bounds(start_text, end_text, tz, now)
    assert start is not None and end is not None
    return Period("range", None, start, end)
