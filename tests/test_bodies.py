"""Shaping bodies: plain data in, the documented body out, with no database in between."""

import json
from typing import NamedTuple

import pytest

from ovpnmon_api import bodies
from ovpnmon_api.resources import Fragment, render
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.meta import CollectorStatus, HostStatus
from ovpnmon_common.planner import plan, plan_analytics


def ts(epoch):
    return None if epoch is None else f"t{epoch}"


NOW = 1_795_717_523


def test_history_fills_every_bucket_without_a_row_with_zeros():
    series = plan("1h", "5min", NOW, RetentionConfig())
    starts = list(series.starts())
    points = bodies.history(ts, series, {starts[2]: [30_000_000, 600]}, [])
    assert [p["timestamp"] for p in points] == [f"t{s}" for s in starts]
    assert [(p["bytes_received"], p["bytes_sent"]) for p in points].count((0, 0)) == 11
    assert len(points) == 12
    assert points[2]["bytes_received"] == 30_000_000
    assert points[2]["bytes_received_rate_mbps"] > 0 and points[0]["bytes_sent_rate_mbps"] == 0


def test_raw_history_is_the_samples_as_stored():
    series = plan("1h", "raw", NOW, RetentionConfig(), 10)
    points = bodies.history(ts, series, {}, [(NOW - 5, 10, 20, 9.5)])
    assert [(p["timestamp"], p["bytes_received"], p["bytes_sent"]) for p in points] == [
        (f"t{NOW - 5}", 10, 20)
    ]


def test_analytics_totals_and_peak_come_from_the_filled_buckets():
    series = plan_analytics("24h", NOW, RetentionConfig())
    starts = list(series.starts())
    data = bodies.analytics_data(
        ts, series, {starts[0]: [1, 2, 3], starts[-1]: [10, 20, 1]}, [("a", 5, 6)]
    )
    assert len(data["global_history_24h"]) == 96 == data["points"]
    assert data["global_history_24h"][1] == {
        "timestamp": f"t{starts[1]}",
        "total_rx": 0,
        "total_tx": 0,
        "active_count": 0,
    }
    assert data["traffic_distribution"] == {"rx": 11, "tx": 22}
    assert data["max_concurrent_24h"] == 3
    assert data["top_clients_24h"] == [
        {"common_name": "a", "total_rx": 5, "total_tx": 6, "total": 11}
    ]


def one_host(heartbeat=None, interval=None, sources=None, name="vpn1", id=1):
    return HostStatus(id, name, heartbeat, interval, sources=sources or {})


def test_health_names_failing_sources_only_with_details():
    sources = {"a": {"state": "ok"}, "b": {"state": "error", "message": "gone"}}
    status = CollectorStatus(hosts={"vpn1": one_host(1000, 10, sources)})
    full = bodies.health(ts, status, 1005, 10, details=True)
    assert full["status"] == "degraded" and full["reason"] == "source b: gone"
    assert full["failing_sources"] == ["b"]
    brief = bodies.health(ts, status, 1005, 10, details=False)
    assert brief == {"success": True, "status": "degraded", "reason": "1 of 2 sources failing"}
    stale = bodies.health(ts, CollectorStatus(hosts={"vpn1": one_host(1000)}), 1031, 10, True)
    assert "31 s ago" in stale["reason"]
    fresh = CollectorStatus(hosts={"vpn1": one_host(1000)})
    assert bodies.health(ts, fresh, 1030, 10, True)["status"] == "healthy"
    never = bodies.health(ts, CollectorStatus(), 1030, 10, False)
    assert never["reason"] == "the collector has not stored a poll yet"


def test_health_in_a_fleet_names_the_stale_host_and_qualifies_sources():
    status = CollectorStatus(
        hosts={
            "vpn1": one_host(1000, 10, {"udp": {"state": "ok"}}),
            "vpn2": one_host(900, 30, {"udp": {"state": "error", "message": "gone"}}, "vpn2", 2),
        }
    )
    full = bodies.health(ts, status, 1005, 10, details=True)
    assert full["status"] == "degraded"
    assert full["stale_hosts"] == ["vpn2"] and full["hosts"] == ["vpn1", "vpn2"]
    assert full["reason"] == (
        "host vpn2: the collector last stored a poll 105 s ago (more than 3 x 30 s): is "
        "ovpnmon-collector running?; source vpn2/udp: gone"
    )
    assert full["failing_sources"] == ["vpn2/udp"]
    brief = bodies.health(ts, status, 1005, 10, details=False)
    assert brief["reason"] == (
        "1 of 2 hosts' collectors have not stored a poll for a while; 1 of 2 sources failing"
    )
    # its own interval says when a host is stale: vpn2 polls every 30 s
    assert bodies.health(ts, status, 985, 10, details=True)["stale_hosts"] == []


def test_a_rendered_fragment_is_spliced_as_json_unchanged():
    inner = render({"x": [1, "é"]})
    body = render({"success": True, "data": Fragment(inner), "n": None})
    assert json.loads(body) == {"success": True, "data": {"x": [1, "é"]}, "n": None}
    assert body == render({"success": True, "data": {"x": [1, "é"]}, "n": None})


def test_a_named_tuple_is_written_as_an_array_and_anything_else_unknown_is_refused():
    class Pair(NamedTuple):
        rx: int
        tx: int

    assert json.loads(render({"pair": Pair(1, 2)})) == {"pair": [1, 2]}
    with pytest.raises(TypeError, match="not JSON serializable: set"):
        render({"odd": {1, 2}})
