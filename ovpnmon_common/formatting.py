"""Units and timestamps as the API renders them; the only place these conversions live."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import lru_cache

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"  # parsing; rendering pads the year to four digits


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


@lru_cache(maxsize=65536)
def _format_cached(epoch: int, tz: str) -> str:
    # bucket starts repeat in every response of the same minute: render each once
    try:
        return _render(dt.datetime.fromtimestamp(epoch, timezone(tz)))
    except (OverflowError, ValueError, OSError):
        return _format_utc_any_year(epoch)


def _format_utc_any_year(epoch: int) -> str:
    """Epoch seconds in UTC on the proleptic Gregorian calendar, for any year (the civil-from-days
    algorithm of H. Hinnant, "chrono-Compatible Low-Level Date Algorithms")."""
    days, seconds = divmod(epoch, 86400)
    z = days + 719468
    era = z // 146097
    doe = z - era * 146097
    yoe = (doe - doe // 1460 + doe // 36524 - doe // 146096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = mp + 3 if mp < 10 else mp - 9
    year = yoe + era * 400 + (month <= 2)
    clock = f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"
    return f"{year:04d}-{month:02d}-{day:02d} {clock}"


def parse_timestamp(text: str, tz: str | dt.tzinfo = "UTC") -> int:
    """Parse ``YYYY-MM-DD`` or ``YYYY-MM-DD HH:MM[:SS]`` in ``tz`` into epoch seconds."""
    zone = timezone(tz) if isinstance(tz, str) else tz
    for fmt in (TIMESTAMP_FORMAT, "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d"):
        try:
            parsed = dt.datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
        return int(parsed.replace(tzinfo=zone).timestamp())
    raise ValueError(f"expected YYYY-MM-DD or 'YYYY-MM-DD HH:MM:SS', got {text!r}")


def to_mb(nbytes: int) -> float:
    """Bytes as MiB (2^20), two decimals: the ``*_mb`` fields."""
    return round(nbytes / 1_048_576, 2)


def to_gb(nbytes: int) -> float:
    """Bytes as GiB (2^30), two decimals: the ``*_gb`` fields."""
    return round(nbytes / 1_073_741_824, 2)


def to_mbps(nbytes: int | float, seconds: float) -> float:
    """Bytes moved over ``seconds`` as megabits per second (10^6 bit/s), three decimals.

    A non-positive duration (a clock step, an empty interval) is a rate of 0, never inf or negative.
    """
    if seconds <= 0 or nbytes <= 0:
        return 0.0
    return round(nbytes * 8 / seconds / 1_000_000, 3)
