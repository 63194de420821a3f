"""Response bodies: plain data in, the JSON-ready body out (``docs/api.md``), no database and
no HTTP. ``ts`` is the API's timestamp formatter (epoch seconds or None -> text or None, in the
configured time zone).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ovpnmon_api.read.clients import ClientRow, OpenSession
from ovpnmon_api.read.sessions import SessionRow
from ovpnmon_common.formatting import to_gb, to_mb, to_mbps
from ovpnmon_common.meta import CollectorStatus, HostStatus
from ovpnmon_common.periods import Period
from ovpnmon_common.planner import Series, UsagePlan
from ovpnmon_common.totals import SystemTotals

Stamp = Callable[[int | None], str | None]
Body = dict[str, Any]

STALE_FACTOR = 3  # /health: no poll stored for this many intervals is "degraded"


def status_word(active: bool) -> str:
    """The contract's word for a client's state."""
    return "Active" if active else "Inactive"


def point(ts: Stamp, when: int, rx: int, tx: int, seconds: float) -> Body:
    """One history point: bytes and Mbit/s rates over ``seconds``."""
    return {
        "timestamp": ts(when),
        "bytes_received": rx,
        "bytes_sent": tx,
        "bytes_received_rate_mbps": to_mbps(rx, seconds),
        "bytes_sent_rate_mbps": to_mbps(tx, seconds),
    }


def filled(series: Series, sums: Mapping[int, Sequence[int]], zero: Sequence[int]) -> list[Any]:
    """One entry per bucket of ``series``, oldest first: its sums, or ``zero`` for a bucket
    without a row (a client that sent nothing, the collector stopped)."""
    return [(start, sums.get(start, zero)) for start in series.starts()]


def history(
    ts: Stamp,
    series: Series,
    sums: Mapping[int, Sequence[int]],
    samples: Sequence[tuple[int, int, int, float]],
) -> list[Body]:
    """A client's history: raw samples as stored, or every bucket of ``series`` zero-filled."""
    if series.step is None:
        return [point(ts, when, rx, tx, interval) for when, rx, tx, interval in samples]
    step = series.step
    return [point(ts, start, rx, tx, step) for start, (rx, tx) in filled(series, sums, (0, 0))]


def session(ts: Stamp, open_: OpenSession) -> Body:
    """One open session as ``/stats/<cn>`` lists it."""
    return {
        "source": open_.source,
        "real_address": open_.real_address,
        "virtual_address": open_.virtual_address,
        "virtual_ipv6": open_.virtual_ipv6,
        "connected_since": ts(open_.connected_since),
        "bytes_received": open_.received,
        "bytes_sent": open_.sent,
    }


def client_stats(
    ts: Stamp,
    row: ClientRow,
    sessions: Sequence[OpenSession],
    points: list[Body],
    series: Series,
    quota: Body | None = None,
) -> Body:
    """``GET /stats/<common_name>``."""
    return {
        "success": True,
        "data": {
            "common_name": row.common_name,
            "status": status_word(row.active),
            "current_rates": {
                "recv_mbps": to_mbps(row.rate_received, 1),
                "sent_mbps": to_mbps(row.rate_sent, 1),
            },
            "totals": {
                "received_mb": to_mb(row.total_received),
                "sent_mb": to_mb(row.total_sent),
                "received_bytes": row.total_received,
                "sent_bytes": row.total_sent,
            },
            "first_seen": ts(row.first_seen),
            "last_seen": ts(row.last_seen),
            "connected_since": ts(row.connected_since),
            "sessions": [session(ts, s) for s in sessions],
            "quota": quota,
            "history": points,
            "meta": {
                "resolution_used": series.label,
                "record_count": len(points),
                "interval_seconds": series.step,
                "range": series.range,
            },
        },
    }


def analytics_data(
    ts: Stamp,
    series: Series,
    buckets: Mapping[int, Sequence[int]],
    top: Sequence[tuple[str, int, int]],
) -> Body:
    """The ``data`` of ``GET /analytics``: 96 buckets zero-filled, top clients, the split."""
    history = []
    total_rx = total_tx = peak = 0
    for start, (rx, tx, active) in filled(series, buckets, (0, 0, 0)):
        total_rx, total_tx, peak = total_rx + rx, total_tx + tx, max(peak, active)
        history.append(
            {"timestamp": ts(start), "total_rx": rx, "total_tx": tx, "active_count": active}
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


def all_stats(ts: Stamp, rows: Sequence[ClientRow]) -> Body:
    """``GET /stats``. (Each row unpacked: 10,000 rows' fields by name cost 2 ms more.)"""
    return {
        "success": True,
        "count": len(rows),
        "data": [
            {
                "common_name": name,
                "status": status_word(active),
                "current_recv_rate_mbps": to_mbps(rate_rx, 1),
                "current_sent_rate_mbps": to_mbps(rate_tx, 1),
                "total_received_mb": to_mb(rx),
                "total_sent_mb": to_mb(tx),
                "sessions": sessions,
                "connected_since": ts(since),
                "last_seen": ts(seen),
            }
            for name, active, _, seen, rx, tx, sessions, since, rate_rx, rate_tx in rows
        ],
    }


def system(ts: Stamp, totals: SystemTotals, heartbeat: int | None) -> Body:
    """``GET /stats/system``."""
    return {
        "success": True,
        "data": {
            "total_clients": totals.clients,
            "active_clients": totals.active,
            "total_received_gb": to_gb(totals.received),
            "total_sent_gb": to_gb(totals.sent),
            "last_poll": ts(heartbeat),
        },
    }


def clients(rows: Sequence[tuple[str, bool]]) -> Body:
    """``GET /clients``."""
    return {
        "success": True,
        "count": len(rows),
        "data": [{"common_name": name, "status": status_word(active)} for name, active in rows],
    }


def certificates(ts: Stamp, rows: Sequence[Mapping[str, Any]], now: int) -> Body:
    """``GET /certificates``: days left in whole days, toward zero."""
    data = [
        {
            "file": row["file"],
            "days_remaining": f"{int((row['not_after'] - now) / 86400)} days",
            "is_expired": row["not_after"] <= now,
            "common_name": row["common_name"],
            "serial": row["serial"],
            "not_before": ts(row["not_before"]),
            "not_after": ts(row["not_after"]),
            "issuer": row["issuer"],
            "revoked": bool(row["revoked"]),
        }
        for row in rows
    ]
    return {"success": True, "count": len(data), "data": data}


def health(
    ts: Stamp,
    status: CollectorStatus,
    now: float,
    interval: int,
    details: bool,
    timezone: str = "UTC",
) -> Body:
    """``GET /health`` of a readable database: healthy, or degraded with the reasons. Without
    ``details`` (a token is configured and the request had none) only the verdict and reasons
    without names, paths or addresses."""
    reasons: list[tuple[str, str]] = []  # (with details, without)
    stale = {
        host.name: reason
        for host in status.hosts.values()
        if (reason := collector_late(host, now, interval)) is not None
    }
    heartbeat = status.heartbeat
    if not status.hosts:
        reasons.append(("the collector has not stored a poll yet",) * 2)
    elif len(status.hosts) == 1 and stale:
        reasons.append(
            (next(iter(stale.values())), "the collector has not stored a poll for a while")
        )
    elif stale:
        reasons.append(
            (
                "; ".join(f"host {name}: {why}" for name, why in stale.items()),
                f"{len(stale)} of {len(status.hosts)} hosts' collectors have not stored a poll "
                "for a while",
            )
        )
    sources = status.sources
    failing = sorted(name for name, h in sources.items() if h.get("state") != "ok")
    if failing:
        reasons.append(
            (
                "; ".join(f"source {n}: {sources[n].get('message', '')}" for n in failing),
                f"{len(failing)} of {len(sources)} sources failing",
            )
        )
    body: Body = {"success": True, "status": "degraded" if reasons else "healthy"}
    if reasons:
        body["reason"] = "; ".join(full if details else brief for full, brief in reasons)
    if details:
        body.update(
            database="ok",
            interval_seconds=interval,
            last_poll=ts(heartbeat),
            sources=sources,
            failing_sources=failing,
            timezone=timezone,
            hosts=sorted(status.hosts),
            stale_hosts=sorted(stale),
        )
    return body


def collector_late(host: HostStatus, now: float, interval: int) -> str | None:
    """Why ``host``'s collector counts as stale at ``now`` (no poll stored for more than
    ``STALE_FACTOR`` of its intervals; ``interval`` when it never said its own), or None."""
    if host.heartbeat is None:
        return "the collector has not stored a poll yet"
    every = host.interval or interval
    if now - host.heartbeat > STALE_FACTOR * every:
        return (
            f"the collector last stored a poll {int(now - host.heartbeat)} s ago (more than "
            f"{STALE_FACTOR} x {every} s): is ovpnmon-collector running?"
        )
    return None


def hosts(
    ts: Stamp,
    status: CollectorStatus,
    counts: Mapping[int, tuple[int, int]],
    now: float,
    interval: int,
) -> Body:
    """``GET /hosts``: every host with its collector's health (``counts``: host id -> clients
    ever seen there, clients connected now)."""
    data = []
    for host in status.hosts.values():
        late = collector_late(host, now, interval)
        failing = sorted(n for n, h in host.sources.items() if h.get("state") != "ok")
        problems = [late] if late else []
        problems += [f"source {n}: {host.sources[n].get('message', '')}" for n in failing]
        clients_seen, active = counts.get(host.id, (0, 0))
        data.append(
            {
                "host": host.name,
                "status": "degraded" if problems else "healthy",
                "reason": "; ".join(problems) or None,
                "last_poll": ts(host.heartbeat),
                "interval_seconds": host.interval,
                "poll_seconds": host.poll_seconds,
                "total_clients": clients_seen,
                "active_clients": active,
                "sources": host.sources,
                "failing_sources": failing,
            }
        )
    return {"success": True, "count": len(data), "data": data}


def percent(used: int, quota: int | None) -> float | None:
    """``used`` as a percentage of ``quota``, two decimals; None without a quota."""
    if quota is None:
        return None
    return round(used * 100 / quota, 2) if quota else 0.0


def usage(
    ts: Stamp,
    period: Period,
    plan: UsagePlan,
    rows: Sequence[tuple[str, int, int]],
    quota_for: Callable[[str], int | None] | None,
    tz: str,
    now: int,
) -> Body:
    """``GET /usage``: every client's bytes in ``period`` (``quota_for``: the monthly quotas,
    for a calendar month)."""
    data = []
    total_rx = total_tx = 0
    for name, rx, tx in rows:
        total_rx, total_tx = total_rx + rx, total_tx + tx
        quota = quota_for(name) if quota_for is not None else None
        data.append(
            {
                "common_name": name,
                "bytes_received": rx,
                "bytes_sent": tx,
                "bytes_total": rx + tx,
                "quota_bytes": quota,
                "quota_used_percent": percent(rx + tx, quota),
            }
        )
    return {
        "success": True,
        "period": {
            "kind": period.kind,
            "name": period.name,
            "from": ts(period.start),
            "to": ts(period.end),
            "timezone": tz,
            "seconds": period.end - period.start,
            "in_progress": now < period.end,
        },
        "exact": plan.exact,
        "rounded": [
            {"edge": e.name, "asked": ts(e.asked), "used": ts(e.used), "tier": e.tier.table.name}
            for e in plan.edges
            if e.rounded
        ],
        "count": len(data),
        "total": {
            "bytes_received": total_rx,
            "bytes_sent": total_tx,
            "bytes_total": total_rx + total_tx,
        },
        "data": data,
    }


USAGE_COLUMNS = (
    "common_name",
    "bytes_received",
    "bytes_sent",
    "bytes_total",
    "quota_bytes",
    "quota_used_percent",
)


def quota(period: Period, plan: UsagePlan, used: int, monthly: int | None) -> Body | None:
    """A client's quota for the current month, as ``/stats/<cn>`` shows it; None without one."""
    if monthly is None:
        return None
    return {
        "period": period.name,
        "monthly_bytes": monthly,
        "used_bytes": used,
        "used_percent": percent(used, monthly),
        "exact": plan.exact,
    }


def connection(ts: Stamp, row: SessionRow, hosts: Mapping[int, str] | None = None) -> Body:
    """One session of the connection log (``hosts``: host id -> name)."""
    end = row.disconnected_at if row.disconnected_at is not None else row.last_seen
    return {
        "id": row.id,
        "common_name": row.common_name,
        "source": row.source,
        "real_address": row.real_address,
        "virtual_address": row.virtual_address,
        "virtual_ipv6": row.virtual_ipv6,
        "connected_since": ts(row.connected_since),
        "disconnected_at": ts(row.disconnected_at),
        "last_seen": ts(row.last_seen),
        "active": row.disconnected_at is None,
        "duration_seconds": max(0, end - row.connected_since),
        "bytes_received": row.received,
        "bytes_sent": row.sent,
        "bytes_total": row.received + row.sent,
        "host": (hosts or {}).get(row.host_id, ""),
    }


SESSION_COLUMNS = (
    "id",
    "common_name",
    "source",
    "real_address",
    "virtual_address",
    "virtual_ipv6",
    "connected_since",
    "disconnected_at",
    "last_seen",
    "active",
    "duration_seconds",
    "bytes_received",
    "bytes_sent",
    "bytes_total",
    "host",
)


def sessions(
    ts: Stamp,
    rows: Sequence[SessionRow],
    next_cursor: str | None,
    hosts: Mapping[int, str] | None = None,
) -> Body:
    """``GET /sessions``: one page of the connection log, newest first."""
    return {
        "success": True,
        "count": len(rows),
        "next_cursor": next_cursor,
        "data": [connection(ts, row, hosts) for row in rows],
    }


def table(body: Body, columns: Sequence[str]) -> tuple[Sequence[str], list[list[Any]]]:
    """The CSV of a list body: ``columns`` of each ``data`` entry, in order (booleans as
    ``true``/``false``, null as an empty field)."""
    rows = []
    for entry in body["data"]:
        row = []
        for column in columns:
            value = entry[column]
            row.append(("true" if value else "false") if isinstance(value, bool) else value)
        rows.append(row)
    return columns, rows
