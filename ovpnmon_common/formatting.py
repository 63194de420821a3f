"""Units and timestamps as the API renders them; the only place these conversions live."""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from collections.abc import Callable
from functools import lru_cache

from ovpnmon_common.buckets import civil_from_days


def _render(moment: dt.datetime) -> str:
    # isoformat, unlike glibc's strftime("%Y"), writes year 1 as "0001"
    return moment.isoformat(" ", "seconds")[:19]


@lru_cache(maxsize=32)
def timezone(name: str) -> zoneinfo.ZoneInfo:
    """The ``ZoneInfo`` for an IANA name (cached: rendering is on every response's hot path)."""
    return zoneinfo.ZoneInfo(name)


def format_timestamp(epoch: int | float, tz: str | dt.tzinfo = "UTC") -> str:
    """Render epoch seconds as ``YYYY-MM-DD HH:MM:SS`` in ``tz``.

    A time outside the years 1 to 9999 (a Connected Since an OpenVPN should never print, but a
    status may) is rendered in UTC, as far as the calendar goes, rather than failing.
    """
    if isinstance(tz, str):
        return _format_cached(int(epoch), tz)
    try:
        return _render(dt.datetime.fromtimestamp(int(epoch), tz))
    except (OverflowError, ValueError, OSError):
        return _format_utc_any_year(int(epoch))


def stamper(tz: str) -> Callable[[int | float | None], str | None]:
    """``format_timestamp`` in ``tz`` as one call, None staying None: the API's formatter,
    which a body of 10,000 clients calls 20,000 times."""

    def stamp(epoch: int | float | None) -> str | None:
        return _format_cached(int(epoch), tz) if epoch is not None else None

    return stamp


@lru_cache(maxsize=65536)
def _format_cached(epoch: int, tz: str) -> str:
    # bucket starts repeat in every response of the same minute: render each once
    try:
        return _render(dt.datetime.fromtimestamp(epoch, timezone(tz)))
    except (OverflowError, ValueError, OSError):
        return _format_utc_any_year(epoch)


def _format_utc_any_year(epoch: int) -> str:
    """Epoch seconds in UTC on the proleptic Gregorian calendar, for any year."""
    days, seconds = divmod(epoch, 86400)
    year, month, day = civil_from_days(days)
    clock = f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{year:04d}-{month:02d}-{day:02d} {clock}"


TIME_FORMS = (
    "YYYY-MM-DD (that day's midnight), 'YYYY-MM-DD HH:MM[:SS]' or YYYY-MM-DDTHH:MM[:SS], "
    "optionally with an offset (Z, +01:00)"
)
# the forms as a regular expression, also published in the OpenAPI document
TIME_PATTERN = r"^\d{4}-\d{2}-\d{2}([ T]\d{2}:\d{2}(:\d{2})?(Z|[+-]\d{2}:\d{2})?)?$"
_TIME = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})(?:[ T](\d{2}):(\d{2})(?::(\d{2}))?)?(Z|[+-]\d{2}:\d{2})?"
)
FIRST_YEAR, LAST_YEAR = 1970, 9998  # epoch seconds before 1970 hold no traffic


def check_year(year: int) -> None:
    """``ValueError`` unless ``year`` can hold traffic."""
    if not FIRST_YEAR <= year <= LAST_YEAR:
        raise ValueError(f"the year must be {FIRST_YEAR} to {LAST_YEAR}")


def midnight(day: dt.date, tz: str) -> int:
    """The first instant of ``day`` in ``tz``: its midnight, or the first time after it where a
    clock change skips midnight (fold=0 takes the offset before the change)."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=timezone(tz)).timestamp())


def parse_timestamp(text: str, tz: str = "UTC") -> int:
    """Epoch seconds of a date (its midnight in ``tz``) or a time (``TIME_FORMS``), local to
    ``tz`` unless it carries an offset. A local time a clock change skips or repeats names no
    one instant and is refused, offering both offsets. ``ValueError`` says what is wrong."""
    m = _TIME.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"must be {TIME_FORMS}; got {text!r}")
    year = int(m[1])
    if m[4] is None and m[7] is not None:
        raise ValueError(f"{text!r}: an offset needs a time of day")
    try:
        check_year(year)
        if m[4] is None:
            return midnight(dt.date(year, int(m[2]), int(m[3])), tz)
        naive = dt.datetime(year, int(m[2]), int(m[3]), int(m[4]), int(m[5]), int(m[6] or 0))
    except ValueError as exc:
        raise ValueError(f"{text!r} is not a time: {exc}") from None
    if m[7] is not None:
        return int(naive.replace(tzinfo=_offset(m[7], text)).timestamp())
    zone = timezone(tz)
    first, second = naive.replace(tzinfo=zone, fold=0), naive.replace(tzinfo=zone, fold=1)
    if first.utcoffset() != second.utcoffset():
        back = dt.datetime.fromtimestamp(first.timestamp(), zone).replace(tzinfo=None)
        what = "is skipped" if back != naive else "happens twice"
        raise ValueError(
            f"{text!r} {what} in {tz} (a clock change): give the offset, "
            f"e.g. {naive.isoformat(' ')}{_render_offset(first)} "
            f"or {naive.isoformat(' ')}{_render_offset(second)}"
        )
    return int(first.timestamp())


def _offset(text: str, value: str) -> dt.tzinfo:
    if text == "Z":
        return dt.timezone.utc
    hours, minutes = int(text[1:3]), int(text[4:6])
    if hours > 23 or minutes > 59:
        raise ValueError(f"{value!r}: the offset must be -23:59 to +23:59")
    delta = dt.timedelta(hours=hours, minutes=minutes)
    return dt.timezone(-delta if text[0] == "-" else delta)


def _render_offset(moment: dt.datetime) -> str:
    offset = moment.utcoffset() or dt.timedelta(0)
    sign = "-" if offset < dt.timedelta(0) else "+"
    minutes = abs(int(offset.total_seconds())) // 60
    return f"{sign}{minutes // 60:02d}:{minutes % 60:02d}"


def to_mb(nbytes: int) -> float:
    """Bytes as MiB (2^20), two decimals: the ``*_mb`` fields."""
    return _binary_units(nbytes, 1_048_576)


def to_gb(nbytes: int) -> float:
    """Bytes as GiB (2^30), two decimals: the ``*_gb`` fields."""
    return _binary_units(nbytes, 1_073_741_824)


def to_mbps(nbytes: int | float, seconds: float) -> float:
    """Bytes moved over ``seconds`` as megabits per second (10^6 bit/s), three decimals.

    A non-positive duration (a clock step, an empty interval) is a rate of 0, never inf or negative.
    """
    if seconds <= 0 or nbytes <= 0:
        return 0.0
    value = nbytes * 8 / seconds / 1_000_000
    # round(value, 3) with less work (a /stats of 10,000 clients rounds 20,000 rates: 10.4 ->
    # 7.3 ms): value * 1000 is within half an ulp of the exact product, so where it is not
    # within 0.01 of a tie its nearest integer is the exact product's, and that over 1000 is
    # the double nearest to it, which round() returns too. Near a tie round() decides.
    scaled = value * 1000.0
    if scaled < _EXACT_BELOW:  # also False for inf and nan
        nearest = round(scaled)
        if abs(scaled - nearest) < 0.49:
            return nearest / 1000
    return round(value, 3)


# below 2^46 a double's ulp is under 0.01: see to_mbps
_EXACT_BELOW = float(2**46)


def _binary_units(nbytes: int, unit: int) -> float:
    """``round(nbytes / unit, 2)`` for a power-of-two ``unit``, in integers (10,000 sizes: 4.2
    -> 2.8 ms). Below 2^53 bytes the quotient is exact, so round() rounds the exact value half
    to even, as this does (above, this stays exact where the float division would not)."""
    if type(nbytes) is not int:
        return round(nbytes / unit, 2)
    hundredths, rest = divmod(nbytes * 100, unit)
    if 2 * rest > unit or (2 * rest == unit and hundredths & 1):
        hundredths += 1
    return hundredths / 100
