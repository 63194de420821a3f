"""Thin Falcon resources: parse the parameters, read in one snapshot, hand the plain result
to ``ovpnmon_api.bodies`` and the body to ``Context.respond``, the one response path.

Bodies follow ``docs/api.md`` (the contract of ``shared/spec/api-v1.md`` plus added fields).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Hashable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import falcon
import orjson
from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError

from ovpnmon_api import bodies, tables
from ovpnmon_api.cache import ResponseCache
from ovpnmon_api.database import FollowedDatabase
from ovpnmon_api.read import certificates, clients, series
from ovpnmon_api.read import sessions as read_sessions
from ovpnmon_api.read import usage as read_usage
from ovpnmon_common import periods, totals
from ovpnmon_common.config import Config
from ovpnmon_common.formatting import format_timestamp, stamper
from ovpnmon_common.meta import CollectorStatus
from ovpnmon_common.periods import Period
from ovpnmon_common.planner import (
    InvalidQuery,
    Series,
    check_raw_points,
    plan,
    plan_analytics,
    plan_usage,
)
from ovpnmon_common.storage import DatabaseError, describe_error

CSV = "text/csv; charset=utf-8; header=present"


# JSON already rendered, spliced as it is into a body by ``render``.
Fragment = orjson.Fragment


class Download(bytes):
    """A rendered CSV body, with the cursor of the page after it (None on the last page)."""

    next_cursor: str | None = None


def _plain(value: Any) -> Any:
    """What ``render`` writes for a type orjson leaves to its caller: a named tuple as the
    array the standard library's ``json`` writes too."""
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def render(body: Any) -> bytes:
    """The JSON of every response, Falcon's ``resp.media`` included (``app.create_app``): compact
    UTF-8 written by orjson, about ten times as fast as the standard library's ``json`` for the
    large bodies (``/stats`` of 10,000 clients: 2.4 MB in 5 ms against 57). ``Fragment`` values
    are spliced in as they are."""
    return orjson.dumps(body, default=_plain)


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
        self.ts: bodies.Stamp = stamper(self.tz)  # epoch in the time zone; None stays None
        self.cache = cache or ResponseCache(database.counter, config.api.cache_mb * 1024 * 1024)

    def respond(
        self,
        resp: falcon.Response,
        key: Hashable,
        build: Callable[[], Any],
        around: Callable[[Fragment], dict[str, Any]] | None = None,
    ) -> None:
        """Answer with the JSON of ``build()``, rendered once per database state and ``key``.
        ``around`` wraps the cached JSON in parts that change more often (the time of the
        request), rendered on every request."""
        data = self.cache.get_or_build(key, lambda: render(build()))
        resp.content_type = falcon.MEDIA_JSON
        resp.data = render(around(Fragment(data))) if around is not None else data

    def respond_table(
        self,
        req: falcon.Request,
        resp: falcon.Response,
        key: Hashable,
        build: Callable[[], dict[str, Any]],
        columns: Sequence[str],
        filename: str,
    ) -> None:
        """Answer with ``columns`` of the list body ``build()`` as CSV, rendered once per
        database state and ``key``, as a download named ``filename``. A paged body's
        ``next_cursor`` becomes a ``Link: <...>; rel="next"`` header (RFC 8288)."""

        def download() -> Download:
            body = build()
            data = Download(tables.render_csv(*bodies.table(body, columns)))
            data.next_cursor = body.get("next_cursor")
            return data

        data = self.cache.get_or_build(("csv", key), download)
        resp.content_type = CSV
        resp.set_header("Content-Disposition", f'attachment; filename="{filename}"')
        if data.next_cursor is not None:
            query = falcon.to_query_str({**req.params, "cursor": data.next_cursor})
            resp.set_header("Link", f'<{req.root_path}{req.path}{query}>; rel="next"')
        resp.data = bytes(data)

    def status(self) -> CollectorStatus:
        """The collector's status, read once per database state."""

        def read() -> CollectorStatus:
            with self.snapshot() as (_, status):
                return status

        return self.cache.get_or_build(("collector status",), read)

    @contextmanager
    def snapshot(self) -> Iterator[tuple[Connection, CollectorStatus]]:
        """One read transaction and the collector's status in it: every query of a request
        sees the same committed poll."""
        self.database.check()
        with self.database.snapshot() as found:
            yield found

    def hot_seconds(self) -> float:
        """How long a request stays worth answering again after each commit (the warmer's
        horizon): three collector intervals, and at least a minute."""
        try:
            interval = self.status().interval
        except (DatabaseError, DBAPIError):
            interval = None
        return max(60.0, 3.0 * (interval or self.config.interval))

    def time(self, epoch: int) -> str:
        """``epoch`` in the configured time zone."""
        return format_timestamp(epoch, self.tz)

    def now(self) -> int:
        """Now, in whole epoch seconds, from the injected clock."""
        return int(self.clock())


class Resource:
    """Every endpoint holds the shared context and nothing else. Every GET also answers HEAD
    (uptime checkers use it): the same status and headers, no body."""

    warm = True  # answered from the response cache: worth answering again after each commit

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "on_get" in cls.__dict__:
            cls.on_head = cls.on_get  # type: ignore[attr-defined]


# ``_`` is a client-side cache-buster (jQuery's ``cache: false`` adds ``_=<time>``): accepted on
# every endpoint and ignored.
IGNORED_PARAMS = frozenset({"_"})


def bad_request(description: str) -> falcon.HTTPBadRequest:
    """The 400 for a query parameter that cannot be used; ``description`` says what can."""
    return falcon.HTTPBadRequest(title="Bad request", description=description)


def allow_params(req: falcon.Request, *names: str) -> None:
    """Reject query parameters the endpoint does not know (a typo should not pass silently)."""
    unknown = sorted(set(req.params) - set(names) - IGNORED_PARAMS)
    if unknown:
        accepted = ", ".join(names) if names else "none"
        raise bad_request(f"unknown query parameter {unknown[0]!r}; accepted: {accepted}")


def single(req: falcon.Request, name: str) -> str | None:
    """The one value of query parameter ``name`` (None if absent); given twice is a 400."""
    value = req.get_param(name)
    if isinstance(req.params.get(name), list):
        raise bad_request(f"query parameter {name!r} given more than once")
    return value


def host_id(status: CollectorStatus, name: str | None) -> int | None:
    """The id of the host ``?host=`` names (None: every host); 404 for a host never seen."""
    if name is None:
        return None
    found = status.host_id(name)
    if found is None:
        known = ", ".join(status.hosts) or "none yet"
        raise falcon.HTTPNotFound(
            title="Not found",
            description=f"no host named {name!r}; known hosts: {known} (GET /api/v1/hosts)",
        )
    return found


def output_format(req: falcon.Request) -> str:
    """``json`` or ``csv``: ``format=``, else an ``Accept`` header that prefers text/csv."""
    value = single(req, "format")
    if value is not None:
        if value not in ("json", "csv"):
            raise bad_request(f"format must be json or csv; got {value!r}")
        return value
    accept = req.get_header("Accept") or ""
    if "text/csv" in accept and req.client_prefers(["application/json", "text/csv"]) == "text/csv":
        return "csv"
    return "json"


class Analytics(Resource):
    """``GET /analytics``: the whole server in 96 buckets, top clients and the traffic split."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req, "range", "host")
        now = self.ctx.now()
        planned = plan_analytics(single(req, "range"), now, self.ctx.config.retention)
        host = single(req, "host")
        # Only "timestamp" (now) changes within one window of one database state.
        self.ctx.respond(
            resp,
            ("analytics", planned.range, planned.start, planned.end, host),
            lambda: self._data(planned, host),
            around=lambda data: {
                "success": True,
                "timestamp": self.ctx.ts(now),
                "range": planned.range,
                "data": data,
            },
        )

    def _data(self, planned: Series, host: str | None) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            hid = host_id(status, host)
            buckets = series.server_series(conn, status, planned, hid)
            top = series.top_clients(conn, status, planned.start, planned.end, host_id=hid)
        return bodies.analytics_data(self.ctx.ts, planned, buckets, top)


class ClientStats(Resource):
    """``GET /stats/<common_name>``: one client's status, totals and history."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, common_name: str) -> None:
        allow_params(req, "range", "resolution", "host")
        range_, resolution = single(req, "range"), single(req, "resolution")
        host = single(req, "host")
        now = self.ctx.now()
        planned = plan(range_, resolution, now, self.ctx.config.retention)
        month = periods.month_of(now, self.ctx.tz)
        key = ("client", common_name, planned.range, planned.tier.name, planned.step, planned.start)
        self.ctx.respond(
            resp,
            (*key, month.start, host),
            lambda: self._body(common_name, planned, month, host),
        )

    def _body(
        self, common_name: str, planned: Series, month: Period, host: str | None
    ) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            check_raw_points(planned, status.interval or self.ctx.config.interval)
            hid = host_id(status, host)
            found = clients.client(conn, status, common_name, hid)
            if found is None:
                where = f" on host {host!r}" if host is not None else ""
                raise falcon.HTTPNotFound(
                    title="Not found",
                    description=(
                        f"no client named {common_name!r}{where}; GET /api/v1/clients lists them"
                    ),
                )
            row, sessions = found
            sums, samples = series.client_history(conn, status, common_name, hid, planned)
            quota = self._quota(conn, status, row, month, hid)
        points = bodies.history(self.ctx.ts, planned, sums, samples)
        return bodies.client_stats(self.ctx.ts, row, sessions, points, planned, quota)

    def _quota(
        self,
        conn: Connection,
        status: CollectorStatus,
        row: clients.ClientRow,
        month: Period,
        host_id: int | None,
    ) -> dict[str, Any] | None:
        monthly = self.ctx.config.quota.monthly_for(row.common_name)
        if monthly is None:
            return None
        try:
            planned = plan_usage(month.start, month.end, status.pruned, self.ctx.time)
        except InvalidQuery:  # [retention] keeps less than a month of any tier
            return None
        used = read_usage.usage(conn, status, planned, row.common_name, host_id)
        total = sum(rx + tx for _, rx, tx in used)
        return bodies.quota(month, planned, total, monthly)


class AllStats(Resource):
    """``GET /stats``: a snapshot of every known client."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req, "host")
        host = single(req, "host")
        self.ctx.respond(resp, ("stats", host), lambda: self._body(host))

    def _body(self, host: str | None) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            rows = clients.clients(conn, status, host_id(status, host))
        return bodies.all_stats(self.ctx.ts, rows)


class SystemStats(Resource):
    """``GET /stats/system``: whole-server totals."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req, "host")
        host = single(req, "host")
        self.ctx.respond(resp, ("system", host), lambda: self._body(host))

    def _body(self, host: str | None) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            hid = host_id(status, host)
            found = totals.system_totals(conn, hid)
        heartbeat = status.hosts[host].heartbeat if host is not None else status.heartbeat
        return bodies.system(self.ctx.ts, found, heartbeat)


class Clients(Resource):
    """``GET /clients``: common names and status, for dropdowns."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req, "host")
        host = single(req, "host")
        self.ctx.respond(resp, ("clients", host), lambda: self._body(host))

    def _body(self, host: str | None) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            rows = clients.client_status(conn, host_id(status, host))
        return bodies.clients(rows)


class Hosts(Resource):
    """``GET /hosts``: every host of the fleet (every collector writing this database) and
    its collector's health."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req)
        now = self.ctx.now()  # staleness depends on it: one body per second
        self.ctx.respond(resp, ("hosts", now), lambda: self._body(now))

    def _body(self, now: int) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            counts = clients.host_counts(conn)
        return bodies.hosts(self.ctx.ts, status, counts, now, self.ctx.config.interval)


class Certificates(Resource):
    """``GET /certificates``: expiry of every scanned certificate, soonest first."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req)
        now = self.ctx.now()  # days left and expiry depend on it: one body per second
        self.ctx.respond(resp, ("certificates", now), lambda: self._body(now))

    def _body(self, now: int) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, _):
            rows = certificates.certificates(conn)
        return bodies.certificates(self.ctx.ts, rows, now)


class Health(Resource):
    """Database connectivity, collector freshness and source health; never needs a token.

    With ``[api] tokens`` set, a request without a valid token gets the verdict only (status
    and a reason without names, paths or addresses): enough for a monitor, nothing for a
    stranger.
    """

    auth_exempt = True
    warm = False  # cheap, and its freshness is the time of the request

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req)
        details = getattr(req.context, "authorized", True)
        try:
            self.ctx.database.check()
            status = self.ctx.status()
        except (DatabaseError, DBAPIError) as exc:
            resp.status = falcon.HTTP_503
            error = describe_error(exc) if details else "the database cannot be read"
            resp.media = {"success": False, "status": "unhealthy", "error": error}
            return
        interval = status.interval or self.ctx.config.interval
        resp.media = bodies.health(
            self.ctx.ts, status, self.ctx.clock(), interval, details, self.ctx.tz
        )


def require_client(conn: Connection, common_name: str) -> None:
    """404 unless a client named ``common_name`` was ever seen (on any host)."""
    if clients.ONE_CLIENT(conn, name=common_name).first() is None:
        raise falcon.HTTPNotFound(
            title="Not found",
            description=f"no client named {common_name!r}; GET /api/v1/clients lists them",
        )


class Usage(Resource):
    """``GET /usage``: every client's bytes over a calendar period, exactly, with quotas."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        allow_params(req, "period", "from", "to", "common_name", "format", "host")
        fmt = output_format(req)
        now = self.ctx.now()
        period = self._period(req, now)
        name = single(req, "common_name")
        host = single(req, "host")
        # in the key: a body must not go on saying "in progress" once the period is over
        in_progress = now < period.end
        key = (
            *("usage", period.kind, period.name, period.start, period.end),
            *(name, in_progress, host),
        )

        def build() -> dict[str, Any]:
            return self._body(period, name, now, host)

        if fmt == "csv":
            label = period.name or f"{period.start}-{period.end}"
            self.ctx.respond_table(
                req, resp, key, build, bodies.USAGE_COLUMNS, f"usage-{label}.csv"
            )
        else:
            self.ctx.respond(resp, key, build)

    def _period(self, req: falcon.Request, now: int) -> Period:
        text, start, end = single(req, "period"), single(req, "from"), single(req, "to")
        tz = self.ctx.tz
        if text is not None:
            if start is not None or end is not None:
                raise periods.InvalidPeriod("give either period or from/to, not both")
            return periods.parse_period(text, tz)
        return periods.between(start, end, tz, now)

    def _body(self, period: Period, name: str | None, now: int, host: str | None) -> dict[str, Any]:
        with self.ctx.snapshot() as (conn, status):
            hid = host_id(status, host)
            if name is not None:
                require_client(conn, name)
            planned = plan_usage(period.start, period.end, status.pruned, self.ctx.time)
            rows = read_usage.usage(conn, status, planned, name, hid)
        quota = self.ctx.config.quota.monthly_for if period.kind == "month" else None
        return bodies.usage(self.ctx.ts, period, planned, rows, quota, self.ctx.tz, now)


MAX_PAGE = 1000
DEFAULT_PAGE = 100


class Sessions(Resource):
    """``GET /sessions`` and ``/clients/<cn>/sessions``: the connection log, newest first."""

    def on_get(
        self, req: falcon.Request, resp: falcon.Response, common_name: str | None = None
    ) -> None:
        names = ("source", "host", "from", "to", "active", "limit", "cursor", "format")
        allow_params(req, *names, *(("common_name",) if common_name is None else ()))
        fmt = output_format(req)
        if common_name is None:
            common_name = single(req, "common_name")
        start, end = periods.bounds(single(req, "from"), single(req, "to"), self.ctx.tz)
        active = _yes_no(single(req, "active"), "active")
        limit = _limit(single(req, "limit"))
        source, host = single(req, "source"), single(req, "host")
        scope = json.dumps([common_name, source, start, end, active, host])
        cursor = single(req, "cursor")
        after = tables.decode_cursor(cursor, scope, 2) if cursor is not None else None
        key = ("sessions", scope, after, limit)

        def build() -> dict[str, Any]:
            with self.ctx.snapshot() as (conn, status):
                hid = host_id(status, host)
                if common_name is not None:
                    require_client(conn, common_name)
                filters = read_sessions.Filters(common_name, hid, source, start, end, active)
                rows, more = read_sessions.page(conn, filters, after, limit)
            last = (rows[-1].connected_since, rows[-1].id) if more else None
            following = tables.encode_cursor(last, scope) if last is not None else None
            names = {h.id: h.name for h in status.hosts.values()}
            return bodies.sessions(self.ctx.ts, rows, following, names)

        if fmt == "csv":
            self.ctx.respond_table(req, resp, key, build, bodies.SESSION_COLUMNS, "sessions.csv")
        else:
            self.ctx.respond(resp, key, build)


def _yes_no(value: str | None, name: str) -> bool | None:
    if value is None:
        return None
    if value in ("yes", "no"):
        return value == "yes"
    raise bad_request(f"{name} must be yes or no; got {value!r}")


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_PAGE
    if not re.fullmatch(r"[0-9]{1,6}", value) or not 1 <= int(value) <= MAX_PAGE:
        raise bad_request(f"limit must be a whole number from 1 to {MAX_PAGE}; got {value!r}")
    return int(value)
