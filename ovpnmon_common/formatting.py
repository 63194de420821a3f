"""Units and timestamps as the API renders them; the only place these conversions live."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from functools import lru_cache

TIMESTAMP_FORMAT = "%Y-%m-%d %H:%M:%S"


@lru_cache(maxsize=32)
def timezone(name: str) -> zoneinfo.ZoneInfo:
    """The ``ZoneInfo`` for an IANA name (cached: rendering is on every response's hot path)."""
    return zoneinfo.ZoneInfo(name)


def format_timestamp(epoch: int | float, tz: str | dt.tzinfo = "UTC") -> str:
    """Render epoch seconds as ``YYYY-MM-DD HH:MM:SS`` in ``tz``."""
    if isinstance(tz, str):
        return _format_cached(int(epoch), tz)
    return dt.datetime.fromtimestamp(int(epoch), tz).strftime(TIMESTAMP_FORMAT)


@lru_cache(maxsize=65536)
def _format_cached(epoch: int, tz: str) -> str:
    # bucket starts repeat in every response of the same minute: render each once
    return dt.datetime.fromtimestamp(epoch, timezone(tz)).strftime(TIMESTAMP_FORMAT)


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
