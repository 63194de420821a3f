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
    """A database failure in the engine's own words, on one line, without SQLAlchemy's
    statement dump; any other exception as its message."""
    if isinstance(exc, DBAPIError) and exc.orig is not None:
        diag = getattr(exc.orig, "diag", None)  # PostgreSQL's: the message, then a detail
        primary = getattr(diag, "message_primary", None)
        if primary:
            detail = getattr(diag, "message_detail", None)
            return f"{primary} ({detail})" if detail else primary
        return str(exc.orig).splitlines()[0] if str(exc.orig) else type(exc.orig).__name__
    text = str(exc)
    return text.splitlines()[0] if text else type(exc).__name__
