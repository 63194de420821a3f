"""Thin Falcon resources: validate parameters, call one query function, set ``resp.media``."""

from __future__ import annotations

from collections.abc import Callable

import falcon
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from ovpnmon_api import queries
from ovpnmon_common.config import Config
from ovpnmon_common.db import DatabaseError, check_schema, describe_operational_error
from ovpnmon_common.formatting import format_timestamp

STALE_FACTOR = 3


class Health:
    """Database connectivity and collector freshness (never needs a token)."""

    auth_exempt = True

    def __init__(self, engine: Engine, config: Config, clock: Callable[[], float]) -> None:
        self.engine = engine
        self.config = config
        self.clock = clock

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        try:
            check_schema(self.engine, self.config.database_path)
            with self.engine.connect() as conn:
                status = queries.collector_status(conn)
        except (DatabaseError, DBAPIError) as exc:
            detail = describe_operational_error(exc) if isinstance(exc, DBAPIError) else str(exc)  # type: ignore[arg-type]
            resp.status = falcon.HTTP_503
            resp.media = {"success": False, "status": "unhealthy", "error": detail}
            return
        now = self.clock()
        interval = status["interval"] or self.config.interval
        heartbeat = status["heartbeat"]
        body = {
            "success": True,
            "status": "healthy",
            "database": "ok",
            "interval_seconds": interval,
            "last_poll": format_timestamp(heartbeat, self.config.api.timezone)
            if heartbeat
            else None,
            "sources": status["sources"],
        }
        if heartbeat is None:
            body["status"] = "degraded"
            body["reason"] = "the collector has not stored a poll yet"
        elif now - heartbeat > STALE_FACTOR * interval:
            body["status"] = "degraded"
            body["reason"] = (
                f"the collector last stored a poll {int(now - heartbeat)} s ago "
                f"(more than {STALE_FACTOR} x {interval} s): is ovpnmon-collector running?"
            )
        resp.media = body
