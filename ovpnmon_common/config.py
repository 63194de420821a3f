"""The one INI configuration file both programs read, parsed into frozen dataclasses.

Precedence is flags > file > built-in defaults. Every problem is a ``ConfigError`` whose message is
one line naming the file, the section and the key, so a CLI can print it and exit non-zero.
"""

from __future__ import annotations

import configparser
import dataclasses
import functools
import os
import re
import socket
import zoneinfo
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ovpnmon_common.files import MIB, BadFile, read_regular_file
from ovpnmon_common.storage import location

DEFAULT_CONFIG_PATH = "/etc/ovpnmon/ovpnmon.conf"
CONFIG_ENV_VAR = "OVPNMON_CONFIG"
DEFAULT_DB_PATH = "/var/lib/ovpnmon/ovpnmon.db"
MAX_CONFIG_BYTES = 1 * MIB

_SOURCE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# a host name as hostname(1) prints it, or any label an administrator picks for a machine
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,252}$")


class ConfigError(Exception):
    """A configuration problem, described in one line a person can act on."""


@dataclass(frozen=True)
class SourceConfig:
    """One OpenVPN instance: a status file or a management interface."""

    name: str
    status_file: str | None = None
    management: str | None = None
    management_password_file: str | None = None
    timeout: float = 5.0
    stale_after: int = 300
    settle: float = 0.25  # a status file must stand unchanged this long before it is read


@dataclass(frozen=True)
class RetentionConfig:
    """How many days each tier keeps; 0 keeps forever."""

    raw_days: int = 3
    hourly_days: int = 90
    six_hour_days: int = 400
    daily_days: int = 0
    sessions_days: int = 400  # closed sessions (the connection log); open ones always stay


@dataclass(frozen=True)
class QuotaConfig:
    """``[quota]`` and ``[quota:COMMON NAME]``: bytes (both directions) a client may transfer in
    a calendar month of ``[api] timezone``. Reporting only: nothing is ever disconnected."""

    monthly: int | None = None  # the default; None: no quota
    overrides: tuple[tuple[str, int | None], ...] = ()  # (common name, monthly or None)

    @functools.cached_property
    def _by_name(self) -> dict[str, int | None]:
        return dict(self.overrides)

    def monthly_for(self, common_name: str) -> int | None:
        """``common_name``'s monthly quota in bytes, or None."""
        return self._by_name.get(common_name, self.monthly)


@dataclass(frozen=True)
class ApiConfig:
    """``[api]``: where and how the API listens and what it answers."""

    host: str = "127.0.0.1"
    port: int = 5001
    timezone: str = "UTC"
    threads: int = 4
    cache_mb: int = 64  # rendered bodies kept until the database changes; 0 turns it off
    tokens: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ()
    dashboard: bool = True  # the built-in dashboard at /
    metrics: bool = True  # Prometheus /metrics
    metrics_per_client: bool = True  # per-client series in /metrics (off for very large servers)


@dataclass(frozen=True)
class Config:
    """The whole configuration file, validated."""

    path: str | None = None
    database: str = DEFAULT_DB_PATH  # a SQLite file path or a PostgreSQL URL (storage.location)
    interval: int = 10
    # the collector's name in a fleet ([collector] host): what ?host= and /hosts call it
    host: str = field(default_factory=lambda: default_host())
    # the outage spool ([collector] spool_dir, spool_mb; ovpnmon_collector.spool): None is the
    # default place (spool_directory); 0 MiB turns it off
    spool_dir: str | None = None
    spool_mb: int = 256
    sources: tuple[SourceConfig, ...] = ()
    certificate_paths: tuple[str, ...] = ()
    crl: str | None = None
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    api: ApiConfig = field(default_factory=ApiConfig)
    quota: QuotaConfig = field(default_factory=QuotaConfig)

    def spool_directory(self) -> str:
        """Where the collector keeps polls the database could not take: ``spool_dir``, or
        beside a SQLite file (``<file>.spool``), or ``/var/lib/ovpnmon/spool`` for a database
        elsewhere (the collector unit's state directory)."""
        if self.spool_dir:
            return self.spool_dir
        if location.is_postgres(self.database):
            return os.path.join(os.path.dirname(DEFAULT_DB_PATH), "spool")
        return f"{self.database}.spool"

    def replace(self, **changes: Any) -> Config:
        """A copy with some fields changed (the CLI's ``--db``)."""
        return dataclasses.replace(self, **changes)

    def with_api(self, **changes: Any) -> Config:
        """A copy with some ``[api]`` values replaced (flags override the file)."""
        return dataclasses.replace(self, api=dataclasses.replace(self.api, **changes))

    def require_sources(self) -> None:
        """Raise unless at least one ``[source:NAME]`` is configured (the collector needs one),
        and no OpenVPN instance is named twice (it would be counted twice)."""
        where = self.path or "built-in defaults"
        if not self.sources:
            raise ConfigError(
                f"{where}: no [source:NAME] section: the collector needs at least one OpenVPN "
                "status_file or management address to read"
            )
        seen: dict[tuple[Any, ...], SourceConfig] = {}
        for source in self.sources:
            for identity in _identities(source):
                other = seen.setdefault(identity, source)
                if other is not source:
                    what = (
                        f"status file ({other.status_file} and {source.status_file})"
                        if source.status_file
                        else f"management interface ({source.management})"
                    )
                    raise ConfigError(
                        f"{where}: [source:{other.name}] and [source:{source.name}] read the same "
                        f"{what}: one OpenVPN instance read twice would be counted twice; keep "
                        "one of them"
                    )


def _identities(source: SourceConfig) -> list[tuple[Any, ...]]:
    """What makes two sources one: the same file (its real path, and its inode if it exists: a
    symbolic or hard link is the same file), or the same management address."""
    if source.status_file:
        path = source.status_file
        found: list[tuple[Any, ...]] = [("path", os.path.realpath(path))]
        try:
            info = os.stat(path)
        except OSError:
            return found
        return [*found, ("inode", info.st_dev, info.st_ino)]
    return [("management", source.management)]


# --- value parsers: each returns the value or raises ValueError("expected ...") ---------------

_N = TypeVar("_N", int, float)


def _between(kind: Callable[[str], _N], low: _N, high: _N, what: str) -> Callable[[str], _N]:
    """A parser of ``kind`` (int or float) values from ``low`` to ``high``."""

    def shown(value: _N) -> str:
        return f"{value:g}" if isinstance(value, float) else str(value)

    expected = f"expected {what} from {shown(low)} to {shown(high)}"

    def parse(text: str) -> _N:
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(expected) from None
        if not low <= value <= high:
            raise ValueError(expected)
        return value

    return parse


def _int_between(low: int, high: int) -> Callable[[str], int]:
    return _between(int, low, high, "a whole number")


def _float_between(low: float, high: float) -> Callable[[str], float]:
    return _between(float, low, high, "a number")


def default_host() -> str:
    """This machine's host name as ``[collector] host`` defaults to it (``localhost`` when it
    has none that would be a valid name)."""
    name = socket.gethostname()
    return name if _HOST_NAME.match(name) else "localhost"


def parse_host(text: str) -> str:
    """A host name as ``[collector] host`` takes it (``ValueError`` otherwise)."""
    return _host(text)


def _host(text: str) -> str:
    if not _HOST_NAME.match(text):
        raise ValueError(
            "expected a host name: letters, digits, '.', '_' and '-', starting with a letter or "
            "digit, at most 253 characters"
        )
    return text


def _path(text: str) -> str:
    if not text:
        raise ValueError("expected a file path")
    return text


def _list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _tokens(text: str) -> tuple[str, ...]:
    """Bearer tokens: a list that is there but empty (``tokens = ,``) would turn authentication
    off without a word, so it is an error."""
    tokens = _list(text)
    if not tokens:
        raise ValueError(
            "expected one or more tokens separated by commas (remove the key to serve without "
            "tokens)"
        )
    return tokens


def _timezone(text: str) -> str:
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ValueError("expected an IANA time zone name such as UTC or Europe/Berlin") from None
    return text


def parse_management_address(text: str) -> tuple[str, str | int]:
    """Split ``host:port``, ``[v6]:port`` or ``unix:/path``.

    Returns ``(host, port)``, or ``("unix", path)`` for a unix socket.
    """
    if text.startswith("unix:"):
        path = text[len("unix:") :]
        if not path.startswith("/"):
            raise ValueError("expected unix:/absolute/path")
        return ("unix", path)
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]]+):(\d+)", text)
    if not match:
        raise ValueError("expected HOST:PORT, [IPv6]:PORT or unix:/path")
    host = match.group(1) or match.group(3)
    port = int(match.group(2) or match.group(4))
    if not 1 <= port <= 65535:
        raise ValueError("expected a port from 1 to 65535")
    return (host, port)


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGTP]i?B|B)?", re.IGNORECASE)
_UNITS = {"": 1, "B": 1}
for _i, _prefix in enumerate("KMGTP", start=1):
    _UNITS[f"{_prefix}B"] = 1000**_i
    _UNITS[f"{_prefix}IB"] = 1024**_i


def _size(text: str) -> int | None:
    """``none``, or bytes: a number with B, KB/MB/GB/TB/PB (powers of 1000) or
    KiB/MiB/GiB/TiB/PiB (powers of 1024)."""
    if text.lower() == "none":
        return None
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError("expected none or a size such as 500 GiB, 1.5 TB or 1000000 (bytes)")
    value = float(match[1]) * _UNITS[(match[2] or "").upper()]
    if value > 2**63 - 1:
        raise ValueError("expected at most 8 EiB")
    return int(value)


def _yes_no(text: str) -> bool:
    value = text.strip().lower()
    if value in ("yes", "true", "on", "1"):
        return True
    if value in ("no", "false", "off", "0"):
        return False
    raise ValueError("expected yes or no")


def _management(text: str) -> str:
    parse_management_address(text)
    return text


_Parsers = Mapping[str, Callable[[str], Any]]

_QUOTA_KEYS: _Parsers = {"monthly": _size}  # [quota] and each [quota:COMMON NAME]
_SECTIONS: dict[str, _Parsers] = {
    "database": {"path": _path, "url": location.parse_url},
    "collector": {
        "interval": _int_between(1, 3600),
        "host": _host,
        "spool_dir": _path,
        "spool_mb": _int_between(0, 1_048_576),
    },
    "certificates": {"paths": _list, "crl": _path},
    "retention": {
        "raw_days": _int_between(0, 36500),
        "hourly_days": _int_between(0, 36500),
        "six_hour_days": _int_between(0, 36500),
        "daily_days": _int_between(0, 36500),
        "sessions_days": _int_between(0, 36500),
    },
    "api": {
        "host": _path,
        "port": _int_between(1, 65535),
        "timezone": _timezone,
        "threads": _int_between(1, 64),
        "cache_mb": _int_between(0, 4096),
        "tokens": _tokens,
        "cors_origins": _list,
        "dashboard": _yes_no,
        "metrics": _yes_no,
        "metrics_per_client": _yes_no,
    },
    "quota": _QUOTA_KEYS,
}

_SOURCE_KEYS: _Parsers = {
    "status_file": _path,
    "management": _management,
    "management_password_file": _path,
    "timeout": _float_between(0.1, 60),
    "stale_after": _int_between(1, 86400),
    "settle": _float_between(0, 10),
}


def resolve_config_path(explicit: str | None) -> tuple[str | None, bool]:
    """Which file to read and whether its absence is an error.

    An explicit ``--config`` or ``OVPNMON_CONFIG`` must exist; the default path is optional.
    """
    if explicit:
        return explicit, True
    env = os.environ.get(CONFIG_ENV_VAR)
    if env:
        return env, True
    return DEFAULT_CONFIG_PATH, False


def load_config(path: str | None = None) -> Config:
    """Read the configuration from ``path`` (or ``OVPNMON_CONFIG``, or the default location)."""
    chosen, required = resolve_config_path(path)
    if chosen is None or (not required and not os.path.exists(chosen)):
        return Config()
    try:
        # "utf-8-sig": editors on Windows start the file with a byte order mark
        text = read_regular_file(chosen, MAX_CONFIG_BYTES).decode("utf-8-sig")
    except OSError as exc:
        raise ConfigError(f"{chosen}: cannot read config file: {exc.strerror or exc}") from None
    except BadFile as exc:
        raise ConfigError(f"{chosen}: cannot read config file: it {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{chosen}: cannot read config file: it is not UTF-8 text") from None
    return parse_config(text, chosen)


def parse_config(text: str, path: str = "<config>") -> Config:
    """Parse INI text; ``path`` only names the file in error messages."""
    parser = configparser.ConfigParser(
        inline_comment_prefixes=(";", "#"), interpolation=None, strict=True, default_section="\0"
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        first_line = str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not a valid INI file: {first_line}") from None

    values: dict[str, dict[str, Any]] = {}
    sources: list[SourceConfig] = []
    overrides: list[tuple[str, int | None]] = []
    for section in parser.sections():
        if section.startswith("source:"):
            sources.append(_parse_source(parser, section, path))
            continue
        if section.startswith("quota:"):
            overrides.append(_parse_quota(parser, section, path))
            continue
        known = _SECTIONS.get(section)
        if known is None:
            accepted = ", ".join(
                f"[{name}]" for name in [*_SECTIONS, "source:NAME", "quota:COMMON NAME"]
            )
            raise ConfigError(f"{path}: unknown section [{section}]; accepted: {accepted}")
        values[section] = {
            key: _parse_value(path, section, key, raw, known) for key, raw in parser.items(section)
        }

    retention = RetentionConfig(**values.get("retention", {}))
    api = ApiConfig(**values.get("api", {}))
    certs = values.get("certificates", {})
    return Config(
        path=path,
        database=_database(values.get("database", {}), path),
        interval=values.get("collector", {}).get("interval", 10),
        host=values.get("collector", {}).get("host") or default_host(),
        spool_dir=values.get("collector", {}).get("spool_dir"),
        spool_mb=values.get("collector", {}).get("spool_mb", 256),
        sources=tuple(sources),
        certificate_paths=certs.get("paths", ()),
        crl=certs.get("crl"),
        retention=retention,
        api=api,
        quota=QuotaConfig(overrides=tuple(overrides), **values.get("quota", {})),
    )


def _database(values: dict[str, str], path: str) -> str:
    if "path" in values and "url" in values:
        raise ConfigError(f"{path}: [database]: set path or url, not both")
    return values.get("url") or values.get("path") or DEFAULT_DB_PATH


def _parse_value(path: str, section: str, key: str, raw: str, known: _Parsers) -> Any:
    parse = known.get(key)
    if parse is None:
        accepted = ", ".join(known)
        raise ConfigError(f"{path}: [{section}] {key}: unknown key; accepted: {accepted}")
    try:
        return parse(raw.strip())
    except ValueError as exc:
        shown = location.mask(raw.strip()) if key == "url" else raw.strip()
        raise ConfigError(f"{path}: [{section}] {key}: {exc}, got {shown!r}") from None


def _parse_quota(
    parser: configparser.ConfigParser, section: str, path: str
) -> tuple[str, int | None]:
    name = section[len("quota:") :]
    if not name:
        raise ConfigError(f"{path}: [{section}]: name the client: [quota:COMMON NAME]")
    items = {
        key: _parse_value(path, section, key, raw, _QUOTA_KEYS)
        for key, raw in parser.items(section)
    }
    if "monthly" not in items:
        raise ConfigError(f"{path}: [{section}]: set monthly (a size, or none for no quota)")
    return name, items["monthly"]


def _parse_source(parser: configparser.ConfigParser, section: str, path: str) -> SourceConfig:
    name = section[len("source:") :]
    if not _SOURCE_NAME.match(name):
        raise ConfigError(
            f"{path}: [{section}]: a source name is 1-64 letters, digits, '.', '_' or '-'"
        )
    items = {
        key: _parse_value(path, section, key, raw, _SOURCE_KEYS)
        for key, raw in parser.items(section)
    }
    has_file = "status_file" in items
    has_mgmt = "management" in items
    if has_file == has_mgmt:
        raise ConfigError(f"{path}: [{section}]: set exactly one of status_file or management")
    if "management_password_file" in items and not has_mgmt:
        raise ConfigError(
            f"{path}: [{section}] management_password_file: only applies with management"
        )
    if "settle" in items and not has_file:
        raise ConfigError(f"{path}: [{section}] settle: only applies with status_file")
    return SourceConfig(name=name, **items)
