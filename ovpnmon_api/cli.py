"""``ovpnmon-api``: serve the read-only HTTP API under waitress."""

from __future__ import annotations

import logging
import os
import resource
import signal
import sys

import click

from ovpnmon_common import __version__
from ovpnmon_common.cliutil import CONTEXT_SETTINGS, config_options, load, run_cli
from ovpnmon_common.storage import DatabaseError
from ovpnmon_common.storage.engines import reader_engine
from ovpnmon_common.storage.location import describe, is_postgres
from ovpnmon_common.storage.migrations import check_schema

log = logging.getLogger("ovpnmon.api")


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, "--version", prog_name="ovpnmon-api")
def cli() -> None:
    """Serve ovpnmon's JSON API from the collector's database, opened read-only.

    \b
    Example:
      ovpnmon-api serve --config /etc/ovpnmon/ovpnmon.conf
    """


@cli.command()
@config_options
@click.option("--host", metavar="HOST", help="Address to listen on (overrides [api] host).")
@click.option("--port", type=click.IntRange(1, 65535), help="Port (overrides [api] port).")
@click.option(
    "--threads", type=click.IntRange(1, 64), help="Worker threads (overrides [api] threads)."
)
def serve(
    config_path: str | None,
    db_path: str | None,
    host: str | None,
    port: int | None,
    threads: int | None,
) -> None:
    """Serve the API (default 127.0.0.1:5001) until SIGTERM or Ctrl-C.

    \b
    Example:
      ovpnmon-api serve --db /var/lib/ovpnmon/ovpnmon.db --port 5001
    """
    config = load(config_path, db_path)
    changes = {k: v for k, v in {"host": host, "port": port, "threads": threads}.items() if v}
    config = config.with_api(**changes)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        import waitress

        from ovpnmon_api.app import create_app, tune_garbage_collector
    except ImportError as exc:
        raise click.ClickException(
            f"the API needs its extra: pip install 'ovpnmon[api]' ({exc})"
        ) from None
    engine = reader_engine(config.database, pool_size=config.api.threads)
    where = describe(config.database)
    if is_postgres(config.database):
        try:  # a server down now may be up soon: answer 503 until it is
            check_schema(engine, config.database)
        except DatabaseError as exc:
            log.warning("%s: answering 503 until it can be read", exc)
    elif os.path.exists(config.database):
        try:  # a wrong path or a foreign file is a mistake to say at once
            check_schema(engine, config.database)
        except DatabaseError as exc:
            engine.dispose()
            raise click.ClickException(str(exc)) from None
    else:  # the collector has not created it yet: answer 503 until it does
        log.warning("%s does not exist yet: answering 503 until the collector creates it", where)
    app = create_app(config, engine)
    _raise_open_files_limit(CONNECTION_LIMIT + 256)
    tune_garbage_collector()
    try:
        server = waitress.create_server(
            app,
            host=config.api.host,
            port=config.api.port,
            threads=config.api.threads,
            ident="ovpnmon",
            clear_untrusted_proxy_headers=True,
            # waitress stops accepting at 100 open connections by default: 110 idle keep-alive
            # connections (browsers keep a few each) then made every new request wait
            connection_limit=CONNECTION_LIMIT,
            channel_timeout=CHANNEL_TIMEOUT,
        )
    except OSError as exc:
        raise click.ClickException(
            f"cannot listen on {config.api.host}:{config.api.port}: {exc.strerror or exc}"
        ) from None

    def stop(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt  # waitress closes its sockets and returns from run()

    signal.signal(signal.SIGTERM, stop)
    log.info(
        "serving http://%s:%d/api/v1 from %s (read-only)",
        config.api.host,
        config.api.port,
        where,
    )
    server.run()
    engine.dispose()
    log.info("stopped")


# Open connections waitress keeps (idle keep-alive ones included; each costs a file descriptor
# and a few KiB, no thread), and how long an idle one may stay open.
CONNECTION_LIMIT = 1000
CHANNEL_TIMEOUT = 30


def _raise_open_files_limit(wanted: int) -> None:
    """Raise the soft limit on open files to ``wanted`` (within the hard limit): the common
    default of 1024 is too few for CONNECTION_LIMIT connections."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def main() -> None:
    """The ``ovpnmon-api`` console script."""
    run_cli(cli, "ovpnmon-api")
