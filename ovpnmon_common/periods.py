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

from ovpnmon_common.formatting import timezone
from ovpnmon_common.planner import InvalidQuery

FORMS = "YYYY-MM (a month), YYYY-Www (an ISO week, Monday to Sunday) or YYYY-MM-DD (a day)"
TIME_FORMS = (
    "YYYY-MM-DD (that day's midnight), 'YYYY-MM-DD HH:MM[:SS]' or YYYY-MM-DDTHH:MM[:SS], "
    "optionally with an offset (Z, +01:00)"
)

# the forms as regular expressions, also published in the OpenAPI document
PERIOD_PATTERN = r"^\d{4}-(\d{2}|W\d{2}|\d{2}-\d{2})$"
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?(Z|[+-]\d{2}:\d{2})?)?$"

_MONTH = re.compile(r"(\d{4})-(\d{2})")
_WEEK = re.compile(r"(\d{4})-W(\d{2})")
_DAY = re.compile(r"(\d{4})-(\d{2})-(\d{2})")
_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?(Z|[+-]\d{2}:\d{2})?"
)
FIRST_YEAR, LAST_YEAR = 1970, 9998  # epoch seconds before 1970 hold no traffic


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


def _midnight(day: dt.date, tz: str) -> int:
    """The first instant of ``day`` in ``tz``: its midnight, or the first time after it where a
    clock change skips midnight (fold=0 takes the offset before the change)."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=timezone(tz)).timestamp())


def _check_year(year: int, text: str) -> None:
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise InvalidPeriod(f"{text!r}: the year must be {FIRST_YEAR} to {LAST_YEAR}")


def month(year: int, number: int, tz: str) -> Period:
    """Calendar month ``number`` of ``year`` in ``tz``."""
    following = dt.date(year + number // 12, number % 12 + 1, 1)
    start, end = _midnight(dt.date(year, number, 1), tz), _midnight(following, tz)
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
            _check_year(year, text)
            if not 1 <= number <= 12:
                raise ValueError("month must be 01 to 12")
            return month(year, number, tz)
        if m := _WEEK.fullmatch(value):
            year, week = int(m[1]), int(m[2])
            _check_year(year, text)
            monday = dt.date.fromisocalendar(year, week, 1)
            start = _midnight(monday, tz)
            return Period("week", value, start, _midnight(monday + dt.timedelta(days=7), tz))
        if m := _DAY.fullmatch(value):
            day = dt.date(int(m[1]), int(m[2]), int(m[3]))
            _check_year(day.year, text)
            end = _midnight(day + dt.timedelta(days=1), tz)
            return Period("day", value, _midnight(day, tz), end)
    except ValueError as exc:
        if isinstance(exc, InvalidPeriod):
            raise
        raise InvalidPeriod(f"period {text!r} is not a date: {exc}") from None
    raise InvalidPeriod(f"period must be {FORMS}; got {text!r}")


def parse_time(text: str, tz: str, name: str) -> int:
    """A ``from``/``to`` value in epoch seconds: a date is its midnight in ``tz``, a time without
    an offset is local to ``tz``. A local time a clock change skips or repeats is refused (it
    names no one instant): give the offset."""
    m = _TIME.fullmatch(text.strip())
    if m is None:
        raise InvalidPeriod(f"{name} must be {TIME_FORMS}; got {text!r}")
    try:
        year = int(m[1])
        _check_year(year, text)
        if m[4] is None:
            if m[7] is not None:
                raise InvalidPeriod(f"{name} {text!r}: an offset needs a time of day")
            return _midnight(dt.date(year, int(m[2]), int(m[3])), tz)
        naive = dt.datetime(year, int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6] or 0))
    except InvalidPeriod:
        raise
    except ValueError as exc:
        raise InvalidPeriod(f"{name} {text!r} is not a time: {exc}") from None
    if m[7] is not None:
        offset = dt.timezone.utc if m[7] == "Z" else _offset(m[7], name, text)
        return int(naive.replace(tzinfo=offset).timestamp())
    zone = timezone(tz)
    first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset():
        back = dt.datetime.fromtimestamp(first.timestamp(), zone).replace(tzinfo=None)
        what = "is skipped" if back != naive else "happens twice"
        raise InvalidPeriod(
            f"{name} {text!r} {what} in {tz} (a clock change): give the offset, "
            f"e.g. {naive.isoformat(' ')}{_render_offset(first)} "
            f"or {naive.isoformat(' ')}{_render_offset(second)}"
        )
    return int(first.timestamp())


def _offset(text: str, name: str, value: str) -> dt.timezone:
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise InvalidPeriod(f"{name} {value!r}: the offset must be -23:59 to +23:59")
    delta = dt.timedelta(hours=hours, minutes=minutes)
    return dt.timezone(-delta if text[0] == "-" else delta)


def _render_offset(moment: dt.datetime) -> str:
    offset = moment.utcoffset() or dt.timedelta(0)
    sign = "-" if offset < dt.timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def between(start_text: str | None, end_text: str | None, tz: str, now: int) -> Period:
    """``from``/``to`` as a period: ``to`` defaults to now; ``from`` is required."""
    if start_text is None:
        raise InvalidPeriod(f"give period ({FORMS}) or from (and optionally to)")
    start = parse_time(start_text, tz, "from")
    end = parse_time(end_text, tz, "to") if end_text is not None else now
    if start >= end:
        raise InvalidPeriod(
            f"from ({start_text}) must be before to ({end_text if end_text is not None else 'now'})"
        )
    return Period("range", None, start, end)
