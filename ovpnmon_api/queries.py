"""Every read the API makes: SQLAlchemy Core ``select()`` over the tables of ``ovpnmon_common``.

Functions take a connection (one transaction per request, so one consistent snapshot) and return
plain Python values; they know nothing of HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection

from ovpnmon_common import db


def collector_status(conn: Connection) -> dict[str, Any]:
    """The collector's heartbeat, configured interval and per-source health."""
    entries = db.get_meta_prefix(conn, "")
    sources = {
        key[len("source.") : -len(".health")]: json.loads(value)
        for key, value in entries.items()
        if key.startswith("source.") and key.endswith(".health")
    }
    heartbeat = entries.get("collector.heartbeat")
    interval = entries.get("collector.interval")
    return {
        "heartbeat": int(heartbeat) if heartbeat else None,
        "interval": int(interval) if interval else None,
        "sources": sources,
    }
