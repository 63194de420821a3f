"""``create_app(config)``: the Falcon application, built from a config and a read-only engine."""

from __future__ import annotations

import gc
import hmac
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import falcon
from sqlalchemy import Engine

from ovpnmon_api import errors, resources
from ovpnmon_api.cache import ResponseCache
from ovpnmon_api.dashboard import Dashboard
from ovpnmon_api.database import FollowedDatabase
from ovpnmon_api.metrics import Metrics
from ovpnmon_api.openapi import OpenApi
from ovpnmon_api.warmer import REPLAY, Warmer
from ovpnmon_common.config import Config

PREFIX = "/api/v1"

access_log = logging.getLogger("ovpnmon.api.access")


class BearerTokens:
    """When ``[api] tokens`` is set, every endpoint but ``/health`` and ``/openapi.json`` needs
    one of them; ``req.context.authorized`` says whether the request had one (``/health`` shows
    its details only then)."""

    def __init__(self, tokens: tuple[str, ...]) -> None:
        self.tokens = [token.encode() for token in tokens]

    def process_resource(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, params: Any
    ) -> None:
        if not self.tokens:
            req.context.authorized = True
            return
        header = req.get_header("Authorization") or ""
        scheme, _, token = header.partition(" ")
        given = token.strip().encode()
        valid = scheme.lower() == "bearer" and any(
            hmac.compare_digest(given, t) for t in self.tokens
        )
        req.context.authorized = valid
        if valid or getattr(resource, "auth_exempt", False) or req.method == "OPTIONS":
            return
        if not header:
            description = "a bearer token is required: send 'Authorization: Bearer <token>'"
        elif scheme.lower() != "bearer":
            description = (
                f"the Authorization header must be 'Bearer <token>', not '{scheme[:20]} ...'"
            )
        else:
            description = "this bearer token is not one of [api] tokens"
        raise falcon.HTTPUnauthorized(
            title="Unauthorized", description=description, challenges=["Bearer"]
        )


# Characters that would end or bend a log line (a %0A in a path would forge a second line).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def printable(text: str) -> str:
    """``text`` with control characters escaped (``\n`` as ``\x0a``): one log line stays one."""
    return _CONTROL.sub(
        lambda m: (
            f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}"
        ),
        text,
    )


class AccessLog:
    """One line per request: method, path and query, status, duration."""

    def process_request(self, req: falcon.Request, resp: falcon.Response) -> None:
        req.context.started = time.perf_counter()

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, succeeded: bool
    ) -> None:
        if req.env.get(REPLAY):
            return  # the warmer's, not a client's
        elapsed = (
            time.perf_counter() - getattr(req.context, "started", time.perf_counter())
        ) * 1000
        query = f"?{req.query_string}" if req.query_string else ""
        access_log.info(
            "%s %s %s%s %s %.1fms",
            req.remote_addr,
            printable(req.method),
            printable(req.path),
            printable(query),
            resp.status[:3] if isinstance(resp.status, str) else resp.status,
            elapsed,
        )


class RememberAsked:
    """Hands the warmer every request a resource answered with 200 (those of resources with
    ``warm``: their bodies come from the response cache)."""

    def __init__(self, warmer: Warmer) -> None:
        self.warmer = warmer

    def process_response(
        self, req: falcon.Request, resp: falcon.Response, resource: Any, succeeded: bool
    ) -> None:
        if succeeded and getattr(resource, "warm", False) and resp.status == falcon.HTTP_200:
            self.warmer.remember(req.env)


class _NameWithSlashes:
    """``/clients/<name>/stats`` and ``/clients/<name>/sessions`` for a name that contains
    '/'."""

    warm = True

    def __init__(self, by_suffix: dict[str, Any]) -> None:
        self.by_suffix = by_suffix

    def __call__(self, req: falcon.Request, resp: falcon.Response, **params: Any) -> None:
        if req.method not in ("GET", "HEAD"):
            raise falcon.HTTPMethodNotAllowed(["GET", "HEAD"])
        self.by_suffix[params["what"]].on_get(req, resp, params["common_name"])


# Net new tracked objects (allocations less deallocations) before a young collection: more
# than a cold /stats of 10,000 clients holds at once. At most this many objects of cyclic
# garbage wait to be collected (some megabytes).
YOUNG_THRESHOLD = 100_000


def tune_garbage_collector() -> None:
    """Set the cyclic garbage collector up for serving, as the server's last step before it
    listens.

    A cold ``/stats`` of 10,000 clients allocates some 60,000 tuples, lists and dicts that all
    live until its body is written and form no cycles. The collector walks such objects each
    time they pass one of its thresholds, and every full collection walks every tracked
    object of the process. So:

    - every object alive now (the modules, the app, its compiled statements: some 63,000, none
      of them ever garbage) is frozen out of its walks: 30 ms of walks a request, 1.3 ms with
      them frozen (bench/README.md);
    - its first threshold is raised from 700 to ``YOUNG_THRESHOLD`` net new objects, so a
      request's body is seldom walked while it is built: a cold ``/stats`` of 10,000 clients
      81.6 -> 73.6 ms, as fast as with the collector off (bench/README.md).

    What a request allocates is still collected, cycles too: by reference counting as it is
    freed, a cycle at the latest when ``YOUNG_THRESHOLD`` more objects are alive.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)


def create_app(
    config: Config,
    engine: Engine | None = None,
    clock: Callable[[], float] = time.time,
    cache: ResponseCache | None = None,
    warmer: Warmer | None = None,
) -> falcon.App:
    """Build the app. ``engine`` defaults to the read-only engine on ``config.database``,
    ``cache`` to one of ``config.api.cache_mb`` on the same file, ``warmer`` (with a cache) to
    one that keeps the bodies asked lately warm."""
    database = FollowedDatabase(config.database, pool_size=config.api.threads, engine=engine)
    ctx = resources.Context(database, config, clock, cache)
    middleware: list[Any] = [AccessLog(), BearerTokens(config.api.tokens)]
    if ctx.cache.max_bytes <= 0:
        warmer = None  # nothing to keep warm
    elif warmer is None:
        warmer = Warmer(database.counter, ctx.hot_seconds)
    if warmer is not None:
        middleware.append(RememberAsked(warmer))
    if config.api.cors_origins:
        middleware.insert(0, falcon.CORSMiddleware(allow_origins=list(config.api.cors_origins)))
    app = falcon.App(media_type=falcon.MEDIA_JSON, middleware=middleware)
    # one JSON writer for every body: errors and resp.media too
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = falcon.media.JSONHandler(
        dumps=resources.render
    )
    app.req_options.strip_url_path_trailing_slash = True
    app.req_options.keep_blank_qs_values = True
    errors.install(app)
    if warmer is not None:
        warmer.attach(app)

    client_stats = resources.ClientStats(ctx)
    app.add_route(f"{PREFIX}/analytics", resources.Analytics(ctx))
    app.add_route(f"{PREFIX}/stats", resources.AllStats(ctx))
    app.add_route(f"{PREFIX}/stats/system", resources.SystemStats(ctx))
    # ':path' takes names with '/' (sent as %2F); a client literally named 'system' is reachable
    # as /clients/system/stats, the same resource under a path no fixed name shadows.
    app.add_route(PREFIX + "/stats/{common_name:path}", client_stats)
    app.add_route(PREFIX + "/clients/{common_name}/stats", client_stats)
    sessions = resources.Sessions(ctx)
    app.add_route(f"{PREFIX}/sessions", sessions)
    app.add_route(PREFIX + "/clients/{common_name}/sessions", sessions)
    # a name with '/' (sent as %2F) spans several segments, which no route field can: a sink
    # (tried only when no route matched) takes what lies between /clients/ and /stats
    app.add_sink(
        _NameWithSlashes({"stats": client_stats, "sessions": sessions}),
        rf"{PREFIX}/clients/(?P<common_name>.+/.+)/(?P<what>stats|sessions)$",
    )
    app.add_route(f"{PREFIX}/usage", resources.Usage(ctx))
    app.add_route(f"{PREFIX}/clients", resources.Clients(ctx))
    app.add_route(f"{PREFIX}/hosts", resources.Hosts(ctx))
    app.add_route(f"{PREFIX}/certificates", resources.Certificates(ctx))
    app.add_route(f"{PREFIX}/health", resources.Health(ctx))
    app.add_route(f"{PREFIX}/openapi.json", OpenApi())
    if config.api.metrics:
        app.add_route("/metrics", Metrics(database, config.api.metrics_per_client))
    if config.api.dashboard:
        dashboard = Dashboard()
        app.add_route("/", dashboard)
        app.add_route("/dashboard/{name:path}", dashboard)
    return app
