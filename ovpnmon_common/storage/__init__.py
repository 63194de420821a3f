"""The database, in three parts: ``engines`` (how the collector and the API connect, and the
change counter), ``migrations`` (creating, checking and upgrading the schema) and
``statements`` (compiled-once reads and the bulk inserts and upserts of the hot path).

Everything specific to one database engine lives in one place each: SQLite's pragmas and
``BEGIN IMMEDIATE`` in ``engines``, the upsert syntax in ``statements``.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError


class DatabaseError(Exception):
    """The database cannot be used as it is; the message says why and what to do."""


def describe_error(exc: BaseException) -> str:
    """A database failure in SQLite's own words, without SQLAlchemy's statement dump; any other
    exception as its message."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        return str(exc.orig)
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
