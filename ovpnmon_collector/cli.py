"""``ovpnmon-collector``: the daemon and its maintenance commands (``cli_maintenance``)."""

from __future__ import annotations

import logging
import os
import sys
import threading

import click

import ovpnmon_collector.cli_maintenance  # noqa: F401  (registers the maintenance commands)
from ovpnmon_collector import daemon
from ovpnmon_collector.cli_common import (
    build_collector,
    check_sources,
    cli,
    log_level_option,
    setup_logging,
    wait_option,
    writing,
)
from ovpnmon_collector.lock import WriterBusy
from ovpnmon_collector.notify import Notifier
from ovpnmon_common.cliutil import config_options, load, run_cli
from ovpnmon_common.storage.location import describe

log = logging.getLogger("ovpnmon.collector")


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
        click.echo(f"created schema version {after} in {describe(config.database)}")
    elif before == after:
        click.echo(f"schema version {after} is current in {describe(config.database)}")
    else:
        click.echo(f"upgraded {describe(config.database)} from schema version {before} to {after}")


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
            describe(config.database),
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
            host=config.host,
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
                clock=collector.clock,
                extra=between_polls,
            )
        except WriterBusy as exc:
            raise click.ClickException(f"stopped: {exc}") from None
    log.info("stopped")


def main() -> None:
    # What the collector creates (the database, its WAL files, the lock) is for its group (the
    # API's user is in it) and nobody else, also when it runs outside its unit (UMask=0027).
    """The ``ovpnmon-collector`` console script."""
    os.umask(os.umask(0) | 0o027)
    run_cli(cli, "ovpnmon-collector")
