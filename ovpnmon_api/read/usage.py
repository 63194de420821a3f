"""Usage over a calendar period: every client's bytes between a ``UsagePlan``'s edges, summed
from whole days of ``stats_daily`` in the middle and the finer tiers at the edges (the planner
has already moved each edge to where the tiers still hold it)."""

from __future__ import annotations

from sqlalchemy import Connection

from ovpnmon_api.read import series
from ovpnmon_common.meta import CollectorStatus
from ovpnmon_common.planner import UsagePlan
from ovpnmon_common.tiers import Tier


def _held(status: CollectorStatus, piece: tuple[Tier, int, int]) -> bool:
    tier, start, _ = piece
    return start >= status.pruned.get(tier.name, start)


def usage(
    conn: Connection,
    status: CollectorStatus,
    plan: UsagePlan,
    common_name: str | None = None,
    host_id: int | None = None,
) -> list[tuple[str, int, int]]:
    """(common name, bytes received, bytes sent) of every client with a byte in the period
    (of the one called ``common_name`` only, if given; on ``host_id`` only, if given), by
    common name."""
    parts = series.pieces(status, plan.start, plan.end)
    if not all(_held(status, piece) for piece in parts):
        # a [retention] where a coarser tier keeps less than a finer one: read the middle from
        # the tier that holds the first edge, which holds everything after it
        parts = series.pieces(status, plan.start, plan.end, tier=plan.edges[0].tier)
    return series.client_sums(conn, status, parts, common_name=common_name, host_id=host_id)
