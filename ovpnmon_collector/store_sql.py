"""The statements a poll runs, built once (``statements.executemany`` compiles each statement
object once per process), and the column orders of the rows ``Store`` writes as tuples."""

from __future__ import annotations

from sqlalchemy import bindparam, update

from ovpnmon_common import schema
from ovpnmon_common.storage import statements

_s, _c = schema.sessions, schema.clients
UPDATE_ADDRESSES = (
    update(_s)
    .where(_s.c.id == bindparam("row_id"))
    .values(
        session_key=bindparam("key"),  # changes when a status-version 1 session floats
        real_address=bindparam("real"),
        virtual_address=bindparam("v4"),
        virtual_ipv6=bindparam("v6"),
    )
)
REOPEN_SESSION = (
    update(_s)
    .where(_s.c.id == bindparam("row_id"))
    .values(disconnected_at=None, last_seen=bindparam("ts"))
)
UPDATE_BASELINE = (
    update(_s)
    .where(_s.c.id == bindparam("row_id"))
    .values(baseline_received=bindparam("rx"), baseline_sent=bindparam("tx"))
)
CLOSE_SESSION = (
    update(_s)
    .where(_s.c.id == bindparam("row_id"))
    .values(
        disconnected_at=bindparam("ts"),
        last_seen=bindparam("seen"),
        bytes_received=bindparam("rx"),
        bytes_sent=bindparam("tx"),
    )
)
SAMPLE_COLUMNS = ("client_id", "ts", "bytes_received", "bytes_sent")
CLIENT_COLUMNS = (
    *("id", "common_name", "host_id", "first_seen", "last_seen", "active"),
    *("closed_received", "closed_sent"),
)
SESSION_COLUMNS = (
    *("id", "host_id", "source", "session_key", "connected_since", "client_id"),
    "real_address",
    *("virtual_address", "virtual_ipv6", "first_seen", "last_seen", "bytes_received"),
    *("bytes_sent", "baseline_received", "baseline_sent"),
)
ADD: dict[str, statements.Merge] = {"bytes_received": "add", "bytes_sent": "add"}
ADD_CLOSED = (
    update(_c)
    .where(_c.c.id == bindparam("cid"))
    .values(
        closed_received=_c.c.closed_received + bindparam("rx"),
        closed_sent=_c.c.closed_sent + bindparam("tx"),
    )
)
SET_ACTIVE = update(_c).where(_c.c.id.in_(bindparam("ids", expanding=True))).values(active=True)
SET_INACTIVE = (
    update(_c).where(_c.c.id == bindparam("cid")).values(active=False, last_seen=bindparam("ts"))
)
