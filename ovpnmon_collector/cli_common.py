"""What every ``ovpnmon-collector`` command shares: the click group, the writer's one context
manager (lock, schema, clean close), the collector built from a config, logging."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

import click
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from ovpnmon_collector.collector import Collector
from ovpnmon_collector.lock import PostgresLock, WriterBusy, WriterLock, writer_lock
from ovpnmon_collector.sources import build_source
from ovpnmon_collector.spool import Spool
from ovpnmon_collector.store import Store
from ovpnmon_common import __version__
from ovpnmon_common.cliutil import CONTEXT_SETTINGS, ensure_parent_dir
from ovpnmon_common.config import Config, ConfigError
from ovpnmon_common.storage import DatabaseError, describe_error
from ovpnmon_common.storage.engines import close_writer, writer_engine
from ovpnmon_common.storage.location import describe
from ovpnmon_common.storage.migrations import init_db


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="ovpnmon-collector")
def cli() -> None:
    """Collect OpenVPN traffic history into SQLite. The only process that writes the database.

    \b
    Example:
      ovpnmon-collector --help
      ovpnmon-collector run --config /etc/ovpnmon/ovpnmon.conf
    """


def open_writer(config: Config) -> tuple[Engine, tuple[int | None, int]]:
    """The writer engine on an initialised database; problems become one clean CLI error.
    (Without the writer lock: ``writing`` takes both.)"""
    ensure_parent_dir(config.database)
    engine = writer_engine(config.database)
    try:
        versions = init_db(engine, config.host)
    except DatabaseError as exc:
        engine.dispose()
        raise click.ClickException(f"{describe(config.database)}: {exc}") from None
    except DBAPIError as exc:
        engine.dispose()
        raise click.ClickException(
            f"cannot open database {describe(config.database)}: {describe_error(exc)}"
        ) from None
    return engine, versions


@contextlib.contextmanager
def locked(config: Config, command: str, wait: float = 0.0) -> Iterator[WriterLock | PostgresLock]:
    """The writer lock for one command, refused with one line when another collector holds it."""
    ensure_parent_dir(config.database)
    lock = writer_lock(config.database, command, config.host)
    try:
        lock.acquire(wait)
    except WriterBusy as exc:
        raise click.ClickException(str(exc)) from None
    except ConnectionError as exc:  # PostgreSQL unreachable
        raise click.ClickException(f"cannot take the writer lock: {exc}") from None
    except OSError as exc:
        raise click.ClickException(
            f"cannot lock {lock.path}: {exc.strerror or exc} (the collector must be able to "
            "write the database's directory)"
        ) from None
    try:
        yield lock
    finally:
        lock.release()


@contextlib.contextmanager
def writing(
    config: Config, command: str, wait: float = 0.0
) -> Iterator[tuple[Engine, WriterLock | PostgresLock]]:
    """The database for one writing command: the writer lock, an initialised schema, and a
    clean close. A database error inside becomes one line naming the command."""
    with locked(config, command, wait) as lock:
        engine, versions = open_writer(config)
        lock.versions = versions
        try:
            yield engine, lock
        except DBAPIError as exc:
            raise click.ClickException(f"{command} failed: {describe_error(exc)}") from None
        finally:
            # leaves the file readable by a read-only API with no collector running
            close_writer(engine)


wait_option = click.option(
    "--wait",
    type=click.FloatRange(0, 86400),
    default=0,
    metavar="SECONDS",
    help="Wait this long for another collector command to finish [default: refuse at once].",
)


def check_sources(config: Config) -> None:
    """At least one source, none read twice: a clean CLI error before anything is opened."""
    try:
        config.require_sources()
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def build_collector(config: Config, engine: Engine) -> Collector:
    """The collector ``run`` and ``poll-once`` poll with."""
    check_sources(config)
    spool = None
    if config.spool_mb:
        spool = Spool(config.spool_directory(), config.spool_mb * 1024 * 1024)
    return Collector(
        Store(engine, config.host),
        [build_source(s) for s in config.sources],
        interval=config.interval,
        stale_after={s.name: s.stale_after for s in config.sources},
        spool=spool,
    )


def setup_logging(level: str) -> None:
    """Log to stderr (the journal, under systemd) from ``level`` up."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


log_level_option = click.option(
    "--log-level",
    type=click.Choice(["debug", "info", "warning", "error"]),
    default="info",
    show_default=True,
    help="Lowest level logged to stderr.",
)
