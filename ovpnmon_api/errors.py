"""Every error leaves as ``{"success": false, "error": "..."}``; no stack trace reaches a client."""

from __future__ import annotations

import logging
from typing import Any

import falcon
from sqlalchemy.exc import DBAPIError

from ovpnmon_common.planner import InvalidQuery
from ovpnmon_common.storage import DatabaseError, describe_error

log = logging.getLogger("ovpnmon.api")


def serialize_error(req: falcon.Request, resp: falcon.Response, exc: falcon.HTTPError) -> None:
    """Every HTTP error as ``{"success": false, "error": ...}``."""
    if isinstance(exc, falcon.HTTPRouteNotFound):
        message = f"no endpoint at {req.path}; GET /api/v1/openapi.json lists them"
    elif isinstance(exc, falcon.HTTPMethodNotAllowed):
        message = f"{req.method} is not allowed on {req.path}: the API is read-only, use GET"
    else:
        message = exc.description or exc.title or "error"
    resp.content_type = falcon.MEDIA_JSON
    resp.media = {"success": False, "error": message}


def invalid_query(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    """A range or resolution the planner refused: 400 with its message."""
    raise falcon.HTTPBadRequest(title="Bad request", description=str(ex))


_last_unavailable: list[str] = [""]


def database_unavailable(
    req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any
) -> None:
    """A database that cannot be read: 503 with the reason."""
    detail = describe_error(ex)
    if detail != _last_unavailable[0]:  # once per reason, not once per request
        _last_unavailable[0] = detail
        log.warning("database unavailable (first for %s %s): %s", req.method, req.path, detail)
    raise falcon.HTTPServiceUnavailable(
        title="Service unavailable", description=f"database unavailable: {detail}"
    )


def unexpected(req: falcon.Request, resp: falcon.Response, ex: Exception, params: Any) -> None:
    """A bug: 500 with a generic message; the traceback goes to the log only."""
    if isinstance(ex, falcon.HTTPError):
        raise ex
    log.exception("unexpected error for %s %s", req.method, req.path)
    raise falcon.HTTPInternalServerError(
        title="Internal error", description="internal error: see the ovpnmon-api log"
    )


def install(app: falcon.App) -> None:
    """Map domain errors once, app-wide (falcon picks the most specific handler)."""
    app.set_error_serializer(serialize_error)
    app.add_error_handler(Exception, unexpected)
    app.add_error_handler(InvalidQuery, invalid_query)
    app.add_error_handler(DatabaseError, database_unavailable)
    app.add_error_handler(DBAPIError, database_unavailable)
