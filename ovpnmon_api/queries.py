"""Every read the API makes: SQLAlchemy Core ``select()`` over the tables of ``ovpnmon_common``.

Functions take a connection (one transaction per request, so one consistent snapshot) and return
plain Python values; they know nothing of HTTP.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Connection, func, select

from ovpnmon_common import db, schema


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


def open_session_bytes():
    """Per client: counted bytes of its open sessions (counters minus baseline)."""
    s = schema.sessions
    return (
        select(
            s.c.client_id,
            func.sum(s.c.bytes_received - s.c.baseline_received).label("rx"),
            func.sum(s.c.bytes_sent - s.c.baseline_sent).label("tx"),
            func.count().label("sessions"),
            func.min(s.c.connected_since).label("connected_since"),
        )
        .where(s.c.disconnected_at.is_(None))
        .group_by(s.c.client_id)
        .subquery("open_sessions")
    )


def lifetime_totals(conn: Connection) -> dict[str, tuple[int, int, bool]]:
    """Every client's lifetime (bytes received, bytes sent, active): closed plus open sessions."""
    c = schema.clients
    live = open_session_bytes()
    query = select(
        c.c.common_name,
        c.c.closed_received + func.coalesce(live.c.rx, 0),
        c.c.closed_sent + func.coalesce(live.c.tx, 0),
        c.c.active,
    ).outerjoin(live, live.c.client_id == c.c.id)
    return {name: (int(rx), int(tx), bool(active)) for name, rx, tx, active in conn.execute(query)}
