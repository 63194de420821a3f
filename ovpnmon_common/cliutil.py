"""What both command-line programs share: help options, ``--config``/``--db``, config loading."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ovpnmon_common.config import Config, ConfigError, load_config
from ovpnmon_common.storage import location

F = TypeVar("F", bound=Callable[..., Any])

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def config_options(func: F) -> F:
    """Add ``--config PATH`` and ``--db PATH|URL`` to a command."""
    func = click.option(
        "--db",
        "db_path",
        metavar="PATH|URL",
        help="SQLite database file, or a postgresql+psycopg:// URL (overrides [database]).",
    )(func)
    func = click.option(
        "--config",
        "config_path",
        metavar="PATH",
        envvar="OVPNMON_CONFIG",
        help="Configuration file [default: /etc/ovpnmon/ovpnmon.conf, or $OVPNMON_CONFIG].",
    )(func)
    return func


def load(config_path: str | None, db_path: str | None) -> Config:
    """Load the configuration and apply ``--db``; a problem becomes one clean CLI error."""
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if db_path:
        try:
            config = config.replace(database=location.from_option(db_path))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="'--db'") from None
    return config


def run_cli(group: click.Group, prog_name: str) -> None:
    """Run a program: a mistake on the command line is one line on stderr (click's own usage
    message is three, its help hint and a blank among them), and exit status 2."""
    try:
        group.main(prog_name=prog_name, standalone_mode=False)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx is not None else prog_name
        message = exc.format_message().rstrip(".")
        click.echo(f"Error: {message} (see '{command} -h')", err=True)
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted!", err=True)
        sys.exit(1)


def ensure_parent_dir(path: str) -> None:
    """Create the database's directory (the collector owns it); a failure is a clean error.
    (Nothing to do for a PostgreSQL URL.)"""
    if location.is_postgres(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(parent, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(
            f"cannot create database directory {parent}: {exc.strerror or exc}"
        ) from None
