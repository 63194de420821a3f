"""Rules of ``ovpnmon_common.totals`` that the JSON API and ``/metrics`` share."""

from ovpnmon_common.totals import last_seen


def test_a_connected_client_was_last_seen_at_the_last_poll_else_when_stored():
    assert last_seen(100, active=True, heartbeat=160) == 160
    assert last_seen(100, active=False, heartbeat=160) == 100
    assert last_seen(100, active=True, heartbeat=None) == 100  # no poll recorded yet
