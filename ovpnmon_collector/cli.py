"""``ovpnmon-collector``: the daemon and its maintenance commands."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator

import click
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from ovpnmon_collector import backup, certs, daemon, prune, rollup
from ovpnmon_collector.collector import Collector
from ovpnmon_collector.info import database_info, render_info
from ovpnmon_collector.lock import WriterBusy, WriterLock
from ovpnmon_collector.notify import Notifier
from ovpnmon_collector.sources import build_source
from ovpnmon_common import __version__
from ovpnmon_common.cliutil import (
    CONTEXT_SETTINGS,
    config_options,
    ensure_parent_dir,
    load,
    run_cli,
)
from ovpnmon_common.config import Config, ConfigError
from ovpnmon_common.files import describe_size
from ovpnmon_common.formatting import format_timestamp, parse_timestamp
from ovpnmon_common.storage import DatabaseError, describe_error
from ovpnmon_common.storage.engines import close_writer, reader_engine, writer_engine
from ovpnmon_common.storage.migrations import check_schema, init_db
from ovpnmon_common.tiers import ROLLUPS

log = logging.getLogger("ovpnmon.collector")


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
    ensure_parent_dir(config.database_path)
    engine = writer_engine(config.database_path)
    try:
        versions = init_db(engine)
    except DatabaseError as exc:
        engine.dispose()
        raise click.ClickException(f"{config.database_path}: {exc}") from None
    except DBAPIError as exc:
        engine.dispose()
        raise click.ClickException(
            f"cannot open database {config.database_path}: {describe_error(exc)}"
        ) from None
    return engine, versions


@contextlib.contextmanager
def locked(config: Config, command: str, wait: float = 0.0) -> Iterator[WriterLock]:
    """The writer lock for one command, refused with one line when another collector holds it."""
    ensure_parent_dir(config.database_path)
    lock = WriterLock(config.database_path, command)
    try:
        lock.acquire(wait)
    except WriterBusy as exc:
        raise click.ClickException(str(exc)) from None
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
def writing(config: Config, command: str, wait: float = 0.0) -> Iterator[tuple[Engine, WriterLock]]:
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
    return Collector(
        engine,
        [build_source(s) for s in config.sources],
        interval=config.interval,
        stale_after={s.name: s.stale_after for s in config.sources},
    )


def setup_logging(level: str) -> None:
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


@cli.command("init-db")
@config_options
@wait_option
def init_db_command(config_path: str | None, db_path: str | None, wait: float) -> None:
    """Create the database, or upgrade its schema; safe to run again.

    \b
    Example:
      ovpnmon-collector init-db --db /var/lib/ovpnmon/ovpnmon.db
    """
    config = load(config_path, db_path)
    with writing(config, "init-db", wait) as (_, lock):
        before, after = lock.versions
    if before is None:
        click.echo(f"created schema version {after} in {config.database_path}")
    elif before == after:
        click.echo(f"schema version {after} is current in {config.database_path}")
    else:
        click.echo(f"upgraded {config.database_path} from schema version {before} to {after}")


@cli.command("poll-once")
@config_options
@log_level_option
def poll_once(config_path: str | None, db_path: str | None, log_level: str) -> None:
    """Read every source once, store the result, and exit (non-zero if anything failed).

    Refused while another collector (the daemon) writes the database: both would count the same
    bytes.

    \b
    Example:
      ovpnmon-collector poll-once --config ./ovpnmon.conf
    """
    setup_logging(log_level)
    config = load(config_path, db_path)
    check_sources(config)
    with writing(config, "poll-once") as (engine, _):
        collector = build_collector(config, engine)
        summary = collector.poll()
    for name, message in summary.failed.items():
        click.echo(f"source {name}: {message}", err=True)
    for name in summary.pending:
        click.echo(f"source {name}: still reading after {collector.read_wait:g} s", err=True)
    if not summary.stored:
        raise click.ClickException(summary.error or "nothing was stored")
    click.echo(
        f"stored poll at {summary.ts}: {len(summary.ok)} of {len(config.sources)} sources read, "
        f"{summary.clients} active clients, {summary.sessions} sessions"
    )
    if summary.failed or summary.pending:
        sys.exit(1)


@cli.command("run")
@config_options
@log_level_option
def run_command(config_path: str | None, db_path: str | None, log_level: str) -> None:
    """Run the collector daemon: poll every [collector] interval until SIGTERM or SIGINT.

    Under systemd (Type=notify) it reports READY, WATCHDOG and STOPPING. Refused while another
    collector writes the database.

    \b
    Example:
      ovpnmon-collector run --config /etc/ovpnmon/ovpnmon.conf
    """
    setup_logging(log_level)
    config = load(config_path, db_path)
    check_sources(config)
    with writing(config, "run") as (engine, lock):
        collector = build_collector(config, engine)
        if not daemon.keep_freed_memory():
            log.debug("mallopt unavailable: freed memory goes back to the system after each poll")
        stop = threading.Event()
        daemon.stop_on_signals(stop)
        log.info(
            "collecting from %s every %d s into %s",
            ", ".join(s.name for s in config.sources),
            config.interval,
            config.database_path,
        )
        notifier = Notifier()
        maintenance = daemon.Maintenance(
            engine,
            collector.clock,
            config.interval,
            config.retention,
            config.certificate_paths,
            config.crl,
            slice_limit=notifier.watchdog_every,
        )

        def between_polls() -> None:
            lock.ensure()  # a deleted lock file is taken again, or the daemon stops
            maintenance.run()

        try:
            daemon.run(
                collector,
                config.interval,
                stop,
                notifier=notifier,
                monotonic=collector.clock.monotonic,
                extra=between_polls,
            )
        except WriterBusy as exc:
            raise click.ClickException(f"stopped: {exc}") from None
    log.info("stopped")


@cli.command("rollup")
@config_options
@wait_option
def rollup_command(config_path: str | None, db_path: str | None, wait: float) -> None:
    """Catch every rollup tier up to the last closed bucket now (the daemon does this by itself).

    \b
    Example:
      ovpnmon-collector rollup --config /etc/ovpnmon/ovpnmon.conf
    """
    config = load(config_path, db_path)
    with writing(config, "rollup", wait) as (engine, _):
        reports = rollup.catch_up(engine, int(time.time()))
    for report in reports:
        click.echo(
            f"{report.tier:13s} {report.buckets:6d} buckets built, final up to "
            f"{format_timestamp(report.watermark) if report.watermark else '-'}"
        )


TIER_NAMES = [r.name for r in ROLLUPS]


@cli.command("backfill")
@config_options
@click.option("--from", "start", metavar="DATE", required=True, help="First day (UTC), YYYY-MM-DD.")
@click.option(
    "--to", "end", metavar="DATE", required=True, help="Last day (UTC, included), YYYY-MM-DD."
)
@click.option(
    "--tier",
    "tiers",
    type=click.Choice(TIER_NAMES),
    multiple=True,
    help="Only these tiers (repeatable) [default: all].",
)
@wait_option
def backfill_command(
    config_path: str | None,
    db_path: str | None,
    start: str,
    end: str,
    tiers: tuple[str, ...],
    wait: float,
) -> None:
    """Recompute the tiers over a range of days from the finest data still present.

    Use it after downtime, a bug fix or a retention change, with the daemon stopped (it is
    refused while a collector writes the database). Each bucket is replaced in its own short
    transaction, so the API keeps answering.

    \b
    Example:
      ovpnmon-collector backfill --from 2026-11-01 --to 2026-11-07 --tier hourly
    """
    config = load(config_path, db_path)
    first = _day(start, "--from")
    last = _day(end, "--to")
    if last < first:
        raise click.BadParameter(f"{end} is before --from {start}", param_hint="--to")
    with writing(config, "backfill", wait) as (engine, _):
        reports = rollup.backfill(engine, first, last + 86400, list(tiers) or None)
    for report in reports:
        click.echo(f"{report.tier:13s} {report.buckets:6d} buckets recomputed")


def _day(text: str, option: str) -> int:
    try:
        return parse_timestamp(text)
    except ValueError:
        raise click.BadParameter(
            f"expected a date YYYY-MM-DD, got {text!r}", param_hint=option
        ) from None


@cli.command("prune")
@config_options
@wait_option
def prune_command(config_path: str | None, db_path: str | None, wait: float) -> None:
    """Apply [retention]: delete what no tier keeps any more, then give the space back.

    Never deletes raw samples or tier rows that the next tier has not been built from. Runs in
    short transactions, so the API keeps working meanwhile. The daemon does this hourly by
    itself; this command is for a collector run by cron or a timer, and is refused while the
    daemon writes the database.

    \b
    Example:
      ovpnmon-collector prune --config /etc/ovpnmon/ovpnmon.conf
    """
    config = load(config_path, db_path)
    with writing(config, "prune", wait) as (engine, _):
        report = prune.prune(engine, config.retention, int(time.time()))
    for table, count in report.deleted.items():
        limit = report.cutoffs[table]
        kept = f"before {format_timestamp(limit)}" if limit is not None else "none: kept"
        click.echo(f"{table:15s} {count:10d} rows deleted ({kept})")
    click.echo(f"{report.pages_freed} pages returned to the file system")


@cli.command("scan-certs")
@config_options
@wait_option
def scan_certs_command(config_path: str | None, db_path: str | None, wait: float) -> None:
    """Scan [certificates] paths and record each certificate's expiry (the daemon does it hourly).

    Reads PEM, DER, easy-rsa issued/ files and bundles; other files are reported and skipped.

    \b
    Example:
      ovpnmon-collector scan-certs --config /etc/ovpnmon/ovpnmon.conf
    """
    config = load(config_path, db_path)
    if not config.certificate_paths:
        raise click.ClickException(
            f"{config.path or 'built-in defaults'}: [certificates] paths is not set: "
            "nothing to scan"
        )
    try:
        report = certs.scan(config.certificate_paths, config.crl)
    except RuntimeError as exc:
        raise click.ClickException(str(exc)) from None
    with writing(config, "scan-certs", wait) as (engine, _):
        certs.store(engine, report, int(time.time()))
    for path, why in report.skipped.items():
        click.echo(f"skipped {path}: {why}", err=True)
    if report.crl_error:
        click.echo(report.crl_error, err=True)
    revoked = sum(c.revoked for c in report.certificates)
    click.echo(
        f"recorded {len(report.certificates)} certificates ({revoked} revoked), "
        f"skipped {len(report.skipped)} files"
    )


@cli.command("backup")
@config_options
@click.argument("destination", metavar="DEST")
@click.option("--force", is_flag=True, help="Replace DEST if it exists.")
@click.option(
    "--keep",
    type=click.IntRange(1, 100000),
    metavar="N",
    help="With a directory: delete its dated backups beyond the newest N.",
)
def backup_command(
    config_path: str | None, db_path: str | None, destination: str, force: bool, keep: int | None
) -> None:
    """Copy the database to DEST (a file, or a directory to put a dated file in), consistent
    while the collector runs; the copy opens read-only as it is.

    Run it as a user that may read the database and write DEST (root, or ovpnmon for a
    directory it owns).

    \b
    Example:
      ovpnmon-collector backup /var/backups/ovpnmon/ --keep 14
    """
    config = load(config_path, db_path)
    try:
        written, facts = backup.backup(config.database_path, destination, force=force, keep=keep)
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backed up {config.database_path} to {written}: {_describe(facts)}")


@cli.command("restore")
@config_options
@click.argument("source", metavar="SRC")
@wait_option
def restore_command(config_path: str | None, db_path: str | None, source: str, wait: float) -> None:
    """Put the backup SRC in place of the database, after checking its integrity and schema.

    Refused while a collector writes the database (stop it first); the database it replaces is
    kept beside it as <database>.replaced-<time>. The API reads the restored file by itself.

    \b
    Example:
      systemctl stop ovpnmon-collector
      ovpnmon-collector restore /var/backups/ovpnmon/ovpnmon-20261201T030000Z.db
      systemctl start ovpnmon-collector
    """
    config = load(config_path, db_path)
    with locked(config, "restore", wait):
        try:
            facts, kept = backup.restore(config.database_path, source)
        except backup.BackupError as exc:
            raise click.ClickException(str(exc)) from None
        engine, (before, after) = open_writer(config)  # an older schema is upgraded now
        close_writer(engine)
    upgraded = f", upgraded from schema version {before} to {after}" if before != after else ""
    click.echo(f"restored {source} into {config.database_path}: {_describe(facts)}{upgraded}")
    if kept:
        click.echo(f"the database it replaced is kept as {kept} (delete it when you are sure)")


def _describe(facts: backup.Facts) -> str:
    last = format_timestamp(facts.last_poll) + " UTC" if facts.last_poll else "never"
    return (
        f"{describe_size(facts.size)}, schema version {facts.schema_version}, "
        f"{facts.clients} clients, last poll {last}"
    )


@cli.command("info")
@config_options
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def info_command(config_path: str | None, db_path: str | None, as_json: bool) -> None:
    """Show the database at a glance: tables, size, watermarks, last poll, source health.

    \b
    Example:
      ovpnmon-collector info --db /var/lib/ovpnmon/ovpnmon.db --json
    """
    config = load(config_path, db_path)
    engine = reader_engine(config.database_path)
    try:
        check_schema(engine, config.database_path)
        facts = database_info(engine, config.database_path)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(facts, indent=2, sort_keys=True))
        return
    click.echo(render_info(facts))


def main() -> None:
    # What the collector creates (the database, its WAL files, the lock) is for its group (the
    # API's user is in it) and nobody else, also when it runs outside its unit (UMask=0027).
    os.umask(os.umask(0) | 0o027)
    run_cli(cli, "ovpnmon-collector")
