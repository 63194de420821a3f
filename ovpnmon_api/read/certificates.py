"""The certificates the collector scanned, soonest expiry first."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select

from ovpnmon_common import schema
from ovpnmon_common.storage.statements import Prepared

_t = schema.certificates
CERTIFICATES = Prepared(select(_t).order_by(_t.c.not_after, _t.c.file))


def certificates(conn: Connection) -> list[dict[str, Any]]:
    """Every scanned certificate (all columns), soonest expiry first."""
    return [dict(row._mapping) for row in CERTIFICATES(conn)]
