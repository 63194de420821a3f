"""Where the database is: a SQLite file path, or a PostgreSQL URL, as the config and ``--db``
give it.

``[database] path`` (or ``--db PATH``) names a SQLite file; ``[database] url`` (or ``--db URL``)
takes an SQLAlchemy URL: ``sqlite:///ABSOLUTE/PATH`` (the same as ``path``) or
``postgresql+psycopg://USER@HOST/NAME?sslmode=verify-full`` (``postgresql://`` is read as
psycopg 3; libpq's query options such as ``sslmode`` pass through). Everything else speaks of the
database through ``database: str`` — a path or a URL — and asks this module which it is.
"""

from __future__ import annotations

import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

URL_FORMS = "sqlite:///ABSOLUTE/PATH or postgresql+psycopg://USER@HOST[:PORT]/NAME[?sslmode=...]"


def parse_url(text: str) -> str:
    """The database a ``url`` setting names: a SQLite URL becomes its file path, a PostgreSQL
    URL is kept (``postgresql://`` as ``postgresql+psycopg://``); anything else is a
    ``ValueError`` naming the accepted forms."""
    try:
        url = make_url(text)
    except ArgumentError:
        raise ValueError(f"expected {URL_FORMS}") from None
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        if not url.database or url.database == ":memory:":
            raise ValueError(f"a SQLite URL names a file: {URL_FORMS}")
        return url.database
    if url.drivername in ("postgresql", "postgresql+psycopg"):
        if not url.database:
            raise ValueError(f"the URL names no database: {URL_FORMS}")
        return url.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    raise ValueError(f"unsupported database {url.drivername!r}: expected {URL_FORMS}")


def is_postgres(database: str) -> bool:
    """True for a PostgreSQL URL, False for a SQLite file path."""
    return database.startswith(("postgresql://", "postgresql+psycopg://"))


def postgres_url(database: str) -> URL:
    """The SQLAlchemy URL of a PostgreSQL ``database``."""
    return make_url(database)


def describe(database: str) -> str:
    """``database`` for messages and logs: a path as it is, a URL without its password."""
    if is_postgres(database):
        return mask(database)
    return database


def mask(text: str) -> str:
    """A URL as written (parsed or not) with its password replaced by ``***``, for messages."""
    return _PASSWORD.sub(r"\1***@", text)


_PASSWORD = re.compile(r"(://[^:/@]*:)[^@/]*@")


def from_option(text: str) -> str:
    """``--db``'s value: a URL (it has ``://``) as ``parse_url`` reads it, else a file path."""
    return parse_url(text) if "://" in text else text
