"""The maintenance commands of ``ovpnmon-collector``: rollup, backfill, prune, scan-certs,
backup, restore, copy-to, info. Each takes the writer lock (``cli_common.writing``) or reads
only."""

from __future__ import annotations

import json
import logging
import time

import click
from sqlalchemy import Engine, select

from ovpnmon_collector import backup, certs, copy, pack, prune, rollup
from ovpnmon_collector.cli_common import cli, locked, open_writer, wait_option, writing
from ovpnmon_collector.info import database_info, render_info
from ovpnmon_common import schema
from ovpnmon_common.cliutil import config_options, load
from ovpnmon_common.config import Config, parse_host
from ovpnmon_common.files import describe_size
from ovpnmon_common.formatting import format_timestamp, parse_timestamp
from ovpnmon_common.storage import DatabaseError, location
from ovpnmon_common.storage.engines import close_writer, reader_engine
from ovpnmon_common.storage.location import describe, is_postgres
from ovpnmon_common.storage.migrations import check_schema
from ovpnmon_common.tiers import ROLLUPS

log = logging.getLogger("ovpnmon.collector")


@cli.command("rollup")
@config_options
@wait_option
def rollup_command(config_path: str | None, db_path: str | None, wait: float) -> None:
    """Catch every rollup tier up to the last closed bucket now, then pack the raw samples of
    the buckets now final (the daemon does both by itself).

    \b
    Example:
      ovpnmon-collector rollup --config /etc/ovpnmon/ovpnmon.conf
    """
    config = load(config_path, db_path)
    with writing(config, "rollup", wait) as (engine, _):
        reports = rollup.catch_up(engine, int(time.time()))
        packed = pack.catch_up(engine)
    for report in reports:
        click.echo(
            f"{report.tier:13s} {report.buckets:6d} buckets built, final up to "
            f"{format_timestamp(report.watermark) if report.watermark else '-'}"
        )
    click.echo(f"{'raw samples':13s} {packed:6d} buckets packed")


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
        certs.store(engine, report, int(time.time()), config.host)
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
    sqlite_only(config, "backup")
    try:
        written, facts = backup.backup(config.database, destination, force=force, keep=keep)
    except backup.BackupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"backed up {config.database} to {written}: {_describe(facts)}")


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
    sqlite_only(config, "restore")
    with locked(config, "restore", wait):
        try:
            facts, kept = backup.restore(config.database, source)
        except backup.BackupError as exc:
            raise click.ClickException(str(exc)) from None
        engine, (before, after) = open_writer(config)  # an older schema is upgraded now
        close_writer(engine)
    upgraded = f", upgraded from schema version {before} to {after}" if before != after else ""
    click.echo(f"restored {source} into {config.database}: {_describe(facts)}{upgraded}")
    if kept:
        click.echo(f"the database it replaced is kept as {kept} (delete it when you are sure)")


def sqlite_only(config: Config, command: str) -> None:
    """Refuse a command about SQLite's file on a PostgreSQL database, saying what to use."""
    if is_postgres(config.database):
        raise click.ClickException(
            f"{command} copies a SQLite file; {describe(config.database)} is PostgreSQL: "
            "use pg_dump / pg_restore (docs/postgresql.md)"
        )


def _describe(facts: backup.Facts) -> str:
    last = format_timestamp(facts.last_poll) + " UTC" if facts.last_poll else "never"
    return (
        f"{describe_size(facts.size)}, schema version {facts.schema_version}, "
        f"{facts.clients} clients, last poll {last}"
    )


@cli.command("copy-to")
@config_options
@click.argument("target", metavar="URL")
@click.option(
    "--host",
    "host_name",
    metavar="NAME",
    help="File the history under this host name in the target [default: the name it has].",
)
@wait_option
def copy_to_command(
    config_path: str | None, db_path: str | None, target: str, host_name: str | None, wait: float
) -> None:
    """Copy the whole history into another database, exactly: a SQLite file into PostgreSQL,
    also into a fleet's database that other hosts write.

    Every table is copied in batches, each an upsert: run it again to finish a copy that
    stopped half-way, or to take what was polled since; nothing is ever copied twice. Clients
    and sessions take the target's ids. A target whose host of that name holds another history
    is refused. Rows and byte sums of every table are compared at the end. Refused while a
    collector writes the source, or writes the target as that host: stop it, copy, point
    [database] at the target, start it.

    \b
    Example:
      systemctl stop ovpnmon-collector
      ovpnmon-collector copy-to 'postgresql://ovpnmon_collector@db.example.org/ovpnmon' \\
          --host vpn1.example.org
    """
    config = load(config_path, db_path)
    try:
        destination = location.from_option(target)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="URL") from None
    if destination == config.database:
        raise click.BadParameter("the target is the database itself", param_hint="URL")
    if host_name is not None:
        try:
            host_name = parse_host(host_name)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--host") from None
    source = reader_engine(config.database)
    try:
        check_schema(source, config.database)
        there = config.replace(database=destination, host=host_name or source_host(source, config))
        with (
            locked(config, "copy-to", wait),
            writing(there, "copy-to", wait) as (engine, _),
        ):
            report = copy.copy(source, engine, host_name)
    except (DatabaseError, copy.CopyError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        source.dispose()
    for table in report.tables:
        verdict = "equal" if table.equal else f"DIFFERS: {table.target_rows} rows there"
        sums = f", {sum(table.sums):,} bytes" if table.sums else ""
        click.echo(f"{table.name:16s} {table.rows:12,d} rows{sums}: {verdict}")
    if not report.equal:
        raise click.ClickException("the target differs from the source (above); run it again")
    click.echo(f"copied {describe(config.database)} into {describe(destination)}")


def source_host(engine: Engine, config: Config) -> str:
    """The name the copy files the source's history under (the target's writer lock is that
    host's): its one host's, or this collector's when it has none or several."""
    with engine.connect() as conn:
        names = list(conn.execute(select(schema.hosts.c.name)).scalars())
    return names[0] if len(names) == 1 else config.host


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
    engine = reader_engine(config.database)
    try:
        check_schema(engine, config.database)
        facts = database_info(engine, config.database)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        engine.dispose()
    if as_json:
        click.echo(json.dumps(facts, indent=2, sort_keys=True))
        return
    click.echo(render_info(facts))
