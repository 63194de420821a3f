"""The OpenAPI 3.1 description of the API, served at ``/api/v1/openapi.json``.

Built from the same tables the API validates against (ranges, resolutions, the tiers' labels),
so the document and the behaviour cannot drift apart on those. Tests validate real responses
against it and fuzz a live server with schemathesis.
"""

from __future__ import annotations

from typing import Any

from ovpnmon_common import __version__
from ovpnmon_common.formatting import TIME_PATTERN
from ovpnmon_common.periods import PERIOD_PATTERN
from ovpnmon_common.planner import ANALYTICS, LABELS, RANGES, RESOLUTIONS

TIMESTAMP = {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$"}
NULLABLE_TIMESTAMP = {"anyOf": [TIMESTAMP, {"type": "null"}]}
COUNT = {"type": "integer", "minimum": 0}
NUMBER = {"type": "number", "minimum": 0}
STATUS = {"type": "string", "enum": ["Active", "Inactive"]}


def _obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "type": "object",
        "required": list(required),
        "properties": {**required, **(optional or {})},
    }


def _ok(data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return _obj({"success": {"const": True}, **extra, "data": data})


ERROR = _obj({"success": {"const": False}, "error": {"type": "string", "minLength": 1}})

POINT = _obj(
    {
        "timestamp": TIMESTAMP,
        "bytes_received": COUNT,
        "bytes_sent": COUNT,
        "bytes_received_rate_mbps": NUMBER,
        "bytes_sent_rate_mbps": NUMBER,
    }
)

CLIENT_STATS = _ok(
    _obj(
        {
            "common_name": {"type": "string"},
            "status": STATUS,
            "current_rates": _obj({"recv_mbps": NUMBER, "sent_mbps": NUMBER}),
            "totals": _obj(
                {"received_mb": NUMBER, "sent_mb": NUMBER},
                {"received_bytes": COUNT, "sent_bytes": COUNT},
            ),
            "history": {"type": "array", "items": POINT},
            "meta": _obj(
                {
                    "resolution_used": {
                        "type": "string",
                        "enum": list(LABELS),
                    },
                    "record_count": COUNT,
                },
                {
                    "interval_seconds": {"type": ["integer", "null"]},
                    "range": {"type": "string", "enum": list(RANGES)},
                },
            ),
        },
        {
            "first_seen": TIMESTAMP,
            "last_seen": TIMESTAMP,
            "connected_since": NULLABLE_TIMESTAMP,
            "sessions": {
                "type": "array",
                "items": _obj(
                    {
                        "source": {"type": "string"},
                        "real_address": {"type": "string"},
                        "virtual_address": {"type": "string"},
                        "virtual_ipv6": {"type": "string"},
                        "connected_since": TIMESTAMP,
                        "bytes_received": COUNT,
                        "bytes_sent": COUNT,
                    }
                ),
            },
        },
    )
)

ANALYTICS_BODY = _obj(
    {
        "success": {"const": True},
        "timestamp": TIMESTAMP,
        "range": {"type": "string", "enum": list(ANALYTICS)},
        "data": _obj(
            {
                "global_history_24h": {
                    "type": "array",
                    "minItems": 96,
                    "maxItems": 96,
                    "items": _obj(
                        {
                            "timestamp": TIMESTAMP,
                            "total_rx": COUNT,
                            "total_tx": COUNT,
                            "active_count": COUNT,
                        }
                    ),
                },
                "max_concurrent_24h": COUNT,
                "top_clients_24h": {
                    "type": "array",
                    "maxItems": 10,
                    "items": _obj(
                        {
                            "common_name": {"type": "string"},
                            "total_rx": COUNT,
                            "total_tx": COUNT,
                            "total": COUNT,
                        }
                    ),
                },
                "traffic_distribution": _obj({"rx": COUNT, "tx": COUNT}),
            },
            {"interval_seconds": COUNT, "points": COUNT},
        ),
    }
)

ALL_STATS = _obj(
    {
        "success": {"const": True},
        "count": COUNT,
        "data": {
            "type": "array",
            "items": _obj(
                {
                    "common_name": {"type": "string"},
                    "status": STATUS,
                    "current_recv_rate_mbps": NUMBER,
                    "total_received_mb": NUMBER,
                },
                {
                    "current_sent_rate_mbps": NUMBER,
                    "total_sent_mb": NUMBER,
                    "sessions": COUNT,
                    "connected_since": NULLABLE_TIMESTAMP,
                    "last_seen": TIMESTAMP,
                },
            ),
        },
    }
)

SYSTEM = _ok(
    _obj(
        {
            "total_clients": COUNT,
            "active_clients": COUNT,
            "total_received_gb": NUMBER,
            "total_sent_gb": NUMBER,
        },
        {"last_poll": NULLABLE_TIMESTAMP},
    )
)

CLIENTS = _obj(
    {
        "success": {"const": True},
        "data": {
            "type": "array",
            "items": _obj({"common_name": {"type": "string"}, "status": STATUS}),
        },
    },
    {"count": COUNT},
)

CERTIFICATES = _obj(
    {
        "success": {"const": True},
        "data": {
            "type": "array",
            "items": _obj(
                {
                    "file": {"type": "string"},
                    "days_remaining": {"type": "string", "pattern": r"^-?\d+ days$"},
                    "is_expired": {"type": "boolean"},
                },
                {
                    "common_name": {"type": ["string", "null"]},
                    "serial": {"type": "string"},
                    "not_before": TIMESTAMP,
                    "not_after": TIMESTAMP,
                    "issuer": {"type": "string"},
                    "revoked": {"type": "boolean"},
                },
            ),
        },
    },
    {"count": COUNT},
)

HEALTH_OK = _obj(
    {
        "success": {"const": True},
        "status": {"type": "string", "enum": ["healthy", "degraded"]},
    },
    {
        "database": {"const": "ok"},
        "interval_seconds": COUNT,
        "last_poll": NULLABLE_TIMESTAMP,
        "reason": {"type": "string"},
        "sources": {"type": "object"},
        "failing_sources": {"type": "array", "items": {"type": "string"}},
        "timezone": {"type": "string"},
        "hosts": {"type": "array", "items": {"type": "string"}},
        "stale_hosts": {"type": "array", "items": {"type": "string"}},
    },
)
HOSTS = _obj(
    {
        "success": {"const": True},
        "count": COUNT,
        "data": {
            "type": "array",
            "items": _obj(
                {
                    "host": {"type": "string"},
                    "status": {"type": "string", "enum": ["healthy", "degraded"]},
                    "reason": {"type": ["string", "null"]},
                    "last_poll": NULLABLE_TIMESTAMP,
                    "interval_seconds": {"type": ["integer", "null"]},
                    "poll_seconds": {"type": ["number", "null"]},
                    "total_clients": COUNT,
                    "active_clients": COUNT,
                    "sources": {"type": "object"},
                    "failing_sources": {"type": "array", "items": {"type": "string"}},
                }
            ),
        },
    }
)
HEALTH_BAD = _obj(
    {
        "success": {"const": False},
        "status": {"const": "unhealthy"},
        "error": {"type": "string"},
    }
)


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_or_csv(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    csv = {"schema": {"type": "string"}}
    return {
        "description": description,
        "content": {"application/json": {"schema": schema}, "text/csv": csv},
    }


def _errors(*codes: int) -> dict[str, Any]:
    words = {
        400: "A parameter is not valid; the message says what is accepted",
        401: "A bearer token is required (when [api] tokens is set)",
        404: "No client with that common name",
        503: "The database cannot be read",
    }
    return {str(code): _json(words[code], ERROR) for code in codes}


RANGE = {
    "name": "range",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": list(RANGES), "default": "24h"},
    "description": "Time range, ending now (the bucket in progress included).",
}
RESOLUTION = {
    "name": "resolution",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": list(RESOLUTIONS), "default": "auto"},
    "description": "Bucket width; auto follows the range (see docs/api.md). A combination over "
    "10,000 points or beyond a tier's retention is a 400.",
}
COMMON_NAME: dict[str, Any] = {
    "name": "common_name",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "minLength": 1},
    "description": "The client's common name, URL-encoded; matched exactly.",
}
# /stats/system is the server's totals: there a client named 'system' needs /clients/system/stats
STATS_COMMON_NAME = {
    **COMMON_NAME,
    "schema": {"type": "string", "minLength": 1, "not": {"const": "system"}},
    "description": COMMON_NAME["description"] + " A client named 'system' is reachable as "
    "/clients/system/stats.",
}


def _get(
    summary: str,
    ok: dict[str, Any],
    params: list[Any],
    errors: tuple[int, ...],
    csv: bool = False,
) -> Any:
    answer = (
        _json_or_csv("OK (CSV with format=csv or Accept: text/csv)", ok) if csv else _json("OK", ok)
    )
    return {
        "get": {
            "summary": summary,
            "parameters": params,
            "responses": {"200": answer, **_errors(*errors)},
        }
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


NULLABLE_COUNT = {"type": ["integer", "null"], "minimum": 0}
ONE_CLIENT = _query("common_name", {"type": "string", "minLength": 1}, "One client only.")
HOST = _query(
    "host",
    {"type": "string", "minLength": 1},
    "One host of the fleet only ([collector] host; GET /hosts lists them). Default: every host, "
    "a common name seen on several being one client.",
)
FORMAT = _query(
    "format",
    {"type": "string", "enum": ["json", "csv"], "default": "json"},
    "csv: RFC 4180 with a header row (also with Accept: text/csv).",
)
TIME_TEXT = {
    "type": "string",
    "pattern": TIME_PATTERN,
    "examples": ["2026-11-01", "2026-11-05 10:00"],
}
USAGE_BODY = _obj(
    {
        "success": {"const": True},
        "period": _obj(
            {
                "kind": {"type": "string", "enum": ["month", "week", "day", "range"]},
                "name": {"type": ["string", "null"]},
                "from": TIMESTAMP,
                "to": TIMESTAMP,
                "timezone": {"type": "string"},
                "seconds": COUNT,
                "in_progress": {"type": "boolean"},
            }
        ),
        "exact": {"type": "boolean"},
        "rounded": {
            "type": "array",
            "items": _obj(
                {
                    "edge": {"type": "string", "enum": ["from", "to"]},
                    "asked": TIMESTAMP,
                    "used": TIMESTAMP,
                    "tier": {"type": "string"},
                }
            ),
        },
        "count": COUNT,
        "total": _obj({"bytes_received": COUNT, "bytes_sent": COUNT, "bytes_total": COUNT}),
        "data": {
            "type": "array",
            "items": _obj(
                {
                    "common_name": {"type": "string"},
                    "bytes_received": COUNT,
                    "bytes_sent": COUNT,
                    "bytes_total": COUNT,
                    "quota_bytes": NULLABLE_COUNT,
                    "quota_used_percent": {"type": ["number", "null"], "minimum": 0},
                }
            ),
        },
    }
)
USAGE_PARAMS = [
    _query(
        "period",
        {
            "type": "string",
            "pattern": PERIOD_PATTERN,
            "examples": ["2026-11", "2026-W48", "2026-11-05"],
        },
        "A month (2026-11), an ISO week (2026-W48) or a day (2026-11-05) in [api] timezone. "
        "Or from/to.",
    ),
    _query(
        "from",
        TIME_TEXT,
        "Start (inclusive): a date or a time, in [api] timezone unless it has an offset.",
    ),
    _query("to", TIME_TEXT, "End (exclusive); default now."),
    ONE_CLIENT,
    HOST,
    FORMAT,
]
SESSION = _obj(
    {
        "id": COUNT,
        "common_name": {"type": "string"},
        "source": {"type": "string"},
        "real_address": {"type": "string"},
        "virtual_address": {"type": "string"},
        "virtual_ipv6": {"type": "string"},
        "connected_since": TIMESTAMP,
        "disconnected_at": NULLABLE_TIMESTAMP,
        "last_seen": TIMESTAMP,
        "active": {"type": "boolean"},
        "duration_seconds": COUNT,
        "bytes_received": {"type": "integer"},
        "bytes_sent": {"type": "integer"},
        "bytes_total": {"type": "integer"},
        "host": {"type": "string"},
    }
)
SESSIONS_BODY = _obj(
    {
        "success": {"const": True},
        "count": COUNT,
        "next_cursor": {"type": ["string", "null"]},
        "data": {"type": "array", "items": SESSION},
    }
)
SESSIONS_PARAMS = [
    _query("source", {"type": "string"}, "One OpenVPN instance ([source:NAME])."),
    HOST,
    _query("from", TIME_TEXT, "Sessions still connected at or after this time."),
    _query("to", TIME_TEXT, "Sessions connected before this time."),
    _query("active", {"type": "string", "enum": ["yes", "no"]}, "Open (yes) or closed (no) only."),
    _query(
        "limit",
        {"type": "integer", "minimum": 1, "maximum": 1000, "default": 100},
        "Rows per page.",
    ),
    _query(
        "cursor", {"type": "string"}, "next_cursor of the previous page, with the same filters."
    ),
    FORMAT,
]


def document() -> dict[str, Any]:
    """The OpenAPI document, built once."""

    def client_stats(name: dict[str, Any]) -> dict[str, Any]:
        return _get(
            "One client: status, totals, open sessions and history",
            CLIENT_STATS,
            [name, RANGE, RESOLUTION, HOST],
            (400, 401, 404, 503),
        )

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ovpnmon API",
            "version": __version__,
            "description": "Read-only OpenVPN traffic history. Every error body is "
            '{"success": false, "error": "..."}.',
        },
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            "/analytics": _get(
                "The whole server in 96 buckets, top clients and the traffic split",
                ANALYTICS_BODY,
                [
                    {
                        "name": "range",
                        "in": "query",
                        "required": False,
                        "schema": {"type": "string", "enum": list(ANALYTICS), "default": "24h"},
                    },
                    HOST,
                ],
                (400, 401, 404, 503),
            ),
            "/stats": _get("Every known client", ALL_STATS, [HOST], (400, 401, 404, 503)),
            "/stats/system": _get("Whole-server totals", SYSTEM, [HOST], (400, 401, 404, 503)),
            "/stats/{common_name}": client_stats(STATS_COMMON_NAME),
            "/clients/{common_name}/stats": client_stats(COMMON_NAME),
            "/clients": _get("Common names and status", CLIENTS, [HOST], (400, 401, 404, 503)),
            "/hosts": _get(
                "Every host of the fleet with its collector's health", HOSTS, [], (401, 503)
            ),
            "/usage": _get(
                "Every client's exact bytes over a calendar period, with quotas",
                USAGE_BODY,
                USAGE_PARAMS,
                (400, 401, 404, 503),
                csv=True,
            ),
            "/sessions": _get(
                "The connection log, newest first, one page at a time",
                SESSIONS_BODY,
                [ONE_CLIENT, *SESSIONS_PARAMS],
                (400, 401, 404, 503),
                csv=True,
            ),
            "/clients/{common_name}/sessions": _get(
                "One client's connection log, newest first",
                SESSIONS_BODY,
                [COMMON_NAME, *SESSIONS_PARAMS],
                (400, 401, 404, 503),
                csv=True,
            ),
            "/certificates": _get("Certificate expiry", CERTIFICATES, [], (401, 503)),
            "/health": {
                "get": {
                    "summary": "Database connectivity and collector freshness (no token needed)",
                    "parameters": [],
                    "responses": {
                        "200": _json("Healthy or degraded", HEALTH_OK),
                        "503": _json("The database cannot be read", HEALTH_BAD),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "parameters": [],
                    "responses": {"200": _json("OpenAPI 3.1", {"type": "object"})},
                }
            },
        },
    }


class OpenApi:
    """``GET /openapi.json``. Needs no token: it describes the API, the same for every
    installation, and holds no data."""

    auth_exempt = True

    def __init__(self) -> None:
        self.body = document()

    def on_get(self, req: Any, resp: Any) -> None:
        resp.media = self.body

    on_head = on_get
