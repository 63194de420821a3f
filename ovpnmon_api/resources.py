"""Thin Falcon resources: validate parameters, call query functions, set ``resp.media``.

Bodies follow ``docs/api.md`` (the contract of ``shared/spec/api-v1.md`` plus added fields).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import falcon
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from ovpnmon_api import queries
from ovpnmon_api.cache import ResponseCache
from ovpnmon_api.database import FollowedDatabase
from ovpnmon_common.buckets import Series, plan, plan_analytics
from ovpnmon_common.config import Config
from ovpnmon_common.db import DatabaseError, describe_error
from ovpnmon_common.formatting import format_timestamp, to_gb, to_mb, to_mbps

STALE_FACTOR = 3


class Context:
    """What every resource needs: the database (followed, read-only), the config, the clock
    and the cache."""

    def __init__(
        self,
        database: FollowedDatabase,
        config: Config,
        clock: Callable[[], float],
        cache: ResponseCache | None = None,
    ) -> None:
        self.database = database
        self.engine = database.engine
        self.config = config
        self.clock = clock
        self.tz = config.api.timezone
        self.cache = cache or ResponseCache(database.counter, config.api.cache_mb * 1024 * 1024)

    def respond(self, resp: falcon.Response, key: Hashable, build: Callable[[], Any]) -> None:
        """Answer with the JSON of ``build()``, rendered once per database state and ``key``."""
        resp.content_type = falcon.MEDIA_JSON
        resp.data = self.cache.get_or_build(key, lambda: render(build()))

    def status(self) -> queries.CollectorStatus:
        """The collector's status, read once per database state."""

        def read() -> queries.CollectorStatus:
            self.database.check()
            with self.engine.connect() as conn:
                return queries.collector_status(conn)

        return self.cache.get_or_build(("collector status",), read)

    @contextmanager
    def snapshot(self) -> Iterator[tuple[Connection, queries.CollectorStatus]]:
        """One read transaction: every query of a request sees the same committed poll."""
        self.database.check()
        with self.engine.connect() as conn:
            yield conn, queries.collector_status(conn)

    def ts(self, epoch: int | None) -> str | None:
        return format_timestamp(epoch, self.tz) if epoch is not None else None

    def now(self) -> int:
        return int(self.clock())


class Resource:
    """Every endpoint holds the shared context and nothing else. Every GET also answers HEAD
    (uptime checkers use it): the same status and headers, no body."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "on_get" in cls.__dict__:
            cls.on_head = cls.on_get  # type: ignore[attr-defined]


# ``_`` is a client-side cache-buster (jQuery's ``cache: false`` adds ``_=<time>``): accepted on
# every endpoint and ignored.
IGNORED_PARAMS = frozenset({"_"})


def allow_params(req: falcon.Request, *names: str) -> None:
    """Reject query parameters the endpoint does not know (a typo should not pass silently)."""
    unknown = sorted(set(req.params) - set(names) - IGNORED_PARAMS)
    if unknown:
        accepted = ", ".join(names) if names else "none"
        raise falcon.HTTPBadRequest(
            title="Bad request",
            description=f"unknown query parameter {unknown[0]!r}; accepted: {accepted}",
        )


def single(req: falcon.Request, name: str) -> str | None:
    value = req.get_param(name)
    if isinstance(req.params.get(name), list):
        raise falcon.HTTPBadRequest(
            title="Bad request", description=f"query parameter {name!r} given more than once"
        )
    return value


def render(body: Any) -> bytes:
    """JSON as Falcon's default handler writes it."""
    return json.dumps(body, ensure_ascii=False).encode()


def status_word(active: bool) -> str:
    return "Active" if active else "Inactive"


class Analytics(Resource):
    """``GET /analytics``: the whole server in 96 buckets, top clients and the traffic split."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req, "range")
        now = self.ctx.now()
        series = plan_analytics(single(req, "range"), now, self.ctx.config.retention)
        # Only "timestamp" (now) changes within one window of one database state.
        data = self.ctx.cache.get_or_build(
            ("analytics", series.range, series.start, series.end),
            lambda: render(self._data(series)),
        )
        resp.content_type = falcon.MEDIA_JSON
        resp.data = b"".join(
            [
                b'{"success": true, "timestamp": ',
                render(self.ctx.ts(now)),
                b', "range": ',
                render(series.range),
                b', "data": ',
                data,
                b"}",
            ]
        )

    def _data(self, series: Series) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            buckets = queries.global_series(conn, status, series)
            top = queries.top_clients(conn, status, series.start, series.end)
        history = []
        total_rx = total_tx = peak = 0
        for start in series.starts():
            rx, tx, active = buckets.get(start, (0, 0, 0))
            total_rx, total_tx, peak = total_rx + rx, total_tx + tx, max(peak, active)
            history.append(
                {
                    "timestamp": self.ctx.ts(start),
                    "total_rx": rx,
                    "total_tx": tx,
                    "active_count": active,
                }
            )
        return {
            "global_history_24h": history,
            "max_concurrent_24h": peak,
            "top_clients_24h": [
                {"common_name": name, "total_rx": rx, "total_tx": tx, "total": rx + tx}
                for name, rx, tx in top
            ],
            "traffic_distribution": {"rx": total_rx, "tx": total_tx},
            "interval_seconds": series.step,
            "points": series.count,
        }


class ClientStats(Resource):
    """``GET /stats/<common_name>``: one client's status, totals and history."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, common_name: str) -> None:
        allow_params(req, "range", "resolution")
        range_, resolution = single(req, "range"), single(req, "resolution")
        now = self.ctx.now()
        cfg = self.ctx.config
        status = self.ctx.status()
        series = plan(range_, resolution, now, cfg.retention, status.interval or cfg.interval)
        key = ("client", common_name, range_, resolution, series.start, series.end, series.step)
        self.ctx.respond(resp, key, lambda: self._body(common_name, series))

    def _body(self, common_name: str, series: Series) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            found = queries.client(conn, status, common_name)
            if found is None:
                raise falcon.HTTPNotFound(
                    title="Not found",
                    description=f"no client named {common_name!r}; GET /api/v1/clients lists them",
                )
            row, sessions = found
            history = self._history(conn, status, row.id, series)
            last_interval = queries.last_interval(conn, status)
        return {
            "success": True,
            "data": {
                "common_name": row.common_name,
                "status": status_word(row.active),
                "current_rates": {
                    "recv_mbps": to_mbps(row.last_received, last_interval),
                    "sent_mbps": to_mbps(row.last_sent, last_interval),
                },
                "totals": {
                    "received_mb": to_mb(row.total_received),
                    "sent_mb": to_mb(row.total_sent),
                    "received_bytes": row.total_received,
                    "sent_bytes": row.total_sent,
                },
                "first_seen": self.ctx.ts(row.first_seen),
                "last_seen": self.ctx.ts(row.last_seen),
                "connected_since": self.ctx.ts(row.connected_since),
                "sessions": [
                    {
                        "source": session["source"],
                        "real_address": session["real_address"],
                        "virtual_address": session["virtual_address"],
                        "virtual_ipv6": session["virtual_ipv6"],
                        "connected_since": self.ctx.ts(session["connected_since"]),
                        "bytes_received": session["rx"],
                        "bytes_sent": session["tx"],
                    }
                    for session in sessions
                ],
                "history": history,
                "meta": {
                    "resolution_used": series.label,
                    "record_count": len(history),
                    "interval_seconds": series.step,
                    "range": series.range,
                },
            },
        }

    def _history(
        self, conn: Connection, status: queries.CollectorStatus, client_id: int, series: Series
    ) -> list[dict[str, Any]]:
        if series.step is None:
            return [
                self._point(ts, rx, tx, interval)
                for ts, rx, tx, interval in queries.client_samples(
                    conn, client_id, series.start, series.end
                )
            ]
        sums = queries.client_series(conn, status, client_id, series)
        points = []
        for start in series.starts():
            rx, tx = sums.get(start, (0, 0))
            points.append(self._point(start, rx, tx, series.step))
        return points

    def _point(self, ts: int, rx: int, tx: int, seconds: float) -> dict[str, Any]:
        return {
            "timestamp": self.ctx.ts(ts),
            "bytes_received": rx,
            "bytes_sent": tx,
            "bytes_received_rate_mbps": to_mbps(rx, seconds),
            "bytes_sent_rate_mbps": to_mbps(tx, seconds),
        }


class AllStats(Resource):
    """``GET /stats``: a snapshot of every known client."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req)
        self.ctx.respond(resp, ("stats",), self._body)

    def _body(self) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            rows = queries.clients(conn, status)
            seconds = queries.last_interval(conn, status)
        return {
            "success": True,
            "count": len(rows),
            "data": [
                {
                    "common_name": row.common_name,
                    "status": status_word(row.active),
                    "current_recv_rate_mbps": to_mbps(row.last_received, seconds),
                    "current_sent_rate_mbps": to_mbps(row.last_sent, seconds),
                    "total_received_mb": to_mb(row.total_received),
                    "total_sent_mb": to_mb(row.total_sent),
                    "sessions": row.open_sessions,
                    "connected_since": self.ctx.ts(row.connected_since),
                    "last_seen": self.ctx.ts(row.last_seen),
                }
                for row in rows
            ],
        }


class SystemStats(Resource):
    """``GET /stats/system``: whole-server totals."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req)
        self.ctx.respond(resp, ("system",), self._body)

    def _body(self) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            totals = queries.system_totals(conn)
        return {
            "success": True,
            "data": {
                "total_clients": totals["clients"],
                "active_clients": totals["active"],
                "total_received_gb": to_gb(totals["received"]),
                "total_sent_gb": to_gb(totals["sent"]),
                "last_poll": self.ctx.ts(status.heartbeat),
            },
        }


class Clients(Resource):
    """``GET /clients``: common names and status, for dropdowns."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req)
        self.ctx.respond(resp, ("clients",), self._body)

    def _body(self) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, _):
            rows = queries.client_status(conn)
        return {
            "success": True,
            "count": len(rows),
            "data": [{"common_name": name, "status": status_word(active)} for name, active in rows],
        }


class Certificates(Resource):
    """``GET /certificates``: expiry of every scanned certificate, soonest first."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req)
        now = self.ctx.now()  # days left and expiry depend on it: one body per second
        self.ctx.respond(resp, ("certificates", now), lambda: self._body(now))

    def _body(self, now: int) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, _):
            rows = queries.certificates(conn)
        data = []
        for row in rows:
            days = int((row["not_after"] - now) / 86400)  # whole days, toward zero
            data.append(
                {
                    "file": row["file"],
                    "days_remaining": f"{days} days",
                    "is_expired": row["not_after"] <= now,
                    "common_name": row["common_name"],
                    "serial": row["serial"],
                    "not_before": self.ctx.ts(row["not_before"]),
                    "not_after": self.ctx.ts(row["not_after"]),
                    "issuer": row["issuer"],
                    "revoked": bool(row["revoked"]),
                }
            )
        return {"success": True, "count": len(data), "data": data}


class Health(Resource):
    """Database connectivity, collector freshness and source health; never needs a token.

    With ``[api] tokens`` set, a request without a valid token gets the verdict only (status
    and a reason without names, paths or addresses): enough for a monitor, nothing for a
    stranger.
    """

    auth_exempt = True

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req)
        config = self.ctx.config
        details = getattr(req.context, "authorized", True)

        try:
            self.ctx.database.check()
            status = self.ctx.status()
        except (DatabaseError, DBAPIError) as exc:
            resp.status = falcon.HTTP_503
            error = describe_error(exc) if details else "the database cannot be read"
            resp.media = {"success": False, "status": "unhealthy", "error": error}
            return
        now = self.ctx.clock()
        interval = status.interval or config.interval
        heartbeat = status.heartbeat
        reasons: list[tuple[str, str]] = []  # (with details, without)
        if heartbeat is None:
            reasons.append(("the collector has not stored a poll yet",) * 2)
        elif now - heartbeat > STALE_FACTOR * interval:
            reasons.append(
                (
                    f"the collector last stored a poll {int(now - heartbeat)} s ago (more than "
                    f"{STALE_FACTOR} x {interval} s): is ovpnmon-collector running?",
                    "the collector has not stored a poll for a while",
                )
            )
        failing = sorted(name for name, h in status.sources.items() if h.get("state") != "ok")
        if failing:
            reasons.append(
                (
                    "; ".join(
                        f"source {n}: {status.sources[n].get('message', '')}" for n in failing
                    ),
                    f"{len(failing)} of {len(status.sources)} sources failing",
                )
            )
        body: dict[str, Any] = {
            "success": True,
            "status": "degraded" if reasons else "healthy",
        }
        if reasons:
            body["reason"] = "; ".join(full if details else brief for full, brief in reasons)
        if details:
            body.update(
                database="ok",
                interval_seconds=interval,
                last_poll=self.ctx.ts(heartbeat),
                sources=status.sources,
                failing_sources=failing,
            )
        resp.media = body
