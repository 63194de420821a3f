"""Hand-built sequences through the pure accounting functions."""

from ovpnmon_collector.accounting import account_source, merge_sources
from ovpnmon_collector.parser import parse_status
from ovpnmon_collector.snapshot import SessionRow, Snapshot
from ovpnmon_demo.simulator import render_status

WATCHED = 1_000_000


def row(cn, cid, since, rx, tx):
    return SessionRow(cn, f"127.0.0.1:{40000 + cid}", "10.98.0.2", "", rx, tx, since, cid)


def snap(*rows):
    return Snapshot(3, None, tuple(rows))


def run(snapshots, first_watched=WATCHED):
    """Feed snapshots in order; return per-CN totals and the final state."""
    state, totals = {}, {}
    for now, snapshot in snapshots:
        delta = account_source(state, snapshot, source="s", first_watched=first_watched, now=now)
        state = delta.state
        for cn, (rx, tx) in delta.deltas.items():
            t = totals.setdefault(cn, [0, 0])
            t[0] += rx
            t[1] += tx
    return totals, state


def test_session_after_first_watch_counts_in_full():
    totals, _ = run([(WATCHED + 10, snap(row("a", 1, WATCHED + 5, 100, 50)))])
    assert totals == {"a": [100, 50]}


def test_session_from_before_first_watch_is_a_baseline():
    totals, state = run(
        [
            (WATCHED + 10, snap(row("a", 1, WATCHED - 3600, 10_000, 5_000))),
            (WATCHED + 20, snap(row("a", 1, WATCHED - 3600, 10_300, 5_100))),
        ]
    )
    assert totals == {"a": [300, 100]}
    (session,) = state.values()
    assert (session.baseline_received, session.baseline_sent) == (10_000, 5_000)


def test_duplicate_cn_sessions_both_count():
    totals, _ = run(
        [
            (
                WATCHED + 10,
                snap(row("bob", 1, WATCHED + 1, 10, 1), row("bob", 2, WATCHED + 1, 20, 2)),
            ),
            (
                WATCHED + 20,
                snap(row("bob", 1, WATCHED + 1, 15, 1), row("bob", 2, WATCHED + 1, 50, 9)),
            ),
        ]
    )
    assert totals == {"bob": [65, 10]}  # 10+20 first, then +5 and +30


def test_reconnect_is_a_new_session_counted_in_full():
    totals, _ = run(
        [
            (WATCHED + 10, snap(row("a", 1, WATCHED + 1, 100, 10))),
            (WATCHED + 20, snap(row("a", 1, WATCHED + 1, 400, 40))),
            # reconnected: new client id, new connected-since, counters from zero
            (WATCHED + 30, snap(row("a", 2, WATCHED + 25, 70, 7))),
        ]
    )
    assert totals == {"a": [470, 47]}


def test_server_restart_reuses_client_ids_with_a_new_connected_since():
    totals, _ = run(
        [
            (WATCHED + 10, snap(row("a", 0, WATCHED + 1, 100, 10))),
            (WATCHED + 20, snap(row("a", 0, WATCHED + 15, 30, 3))),  # id 0 again, new session
        ]
    )
    assert totals == {"a": [130, 13]}
    # the old session is closed, the new one opened: two connections in the history
    d1 = account_source(
        {}, snap(row("a", 0, WATCHED + 1, 100, 10)), source="s", first_watched=WATCHED, now=10
    )
    d2 = account_source(
        d1.state, snap(row("a", 0, WATCHED + 15, 30, 3)), source="s", first_watched=WATCHED, now=20
    )
    assert [s.connected_since for s in d2.closed] == [WATCHED + 1]
    assert [s.connected_since for s in d2.opened] == [WATCHED + 15]
    assert [s.connected_since for s in d2.state.values()] == [WATCHED + 15]


def test_counters_going_backwards_under_one_identity_are_a_restart():
    totals, _ = run(
        [
            (WATCHED + 10, snap(row("a", 0, WATCHED + 1, 1000, 100))),
            (WATCHED + 20, snap(row("a", 0, WATCHED + 1, 40, 4))),
        ]
    )
    assert totals == {"a": [1040, 104]}


def test_disconnect_closes_and_keeps_what_was_counted():
    state = {}
    d1 = account_source(
        state,
        snap(row("a", 1, WATCHED + 1, 100, 10)),
        source="s",
        first_watched=WATCHED,
        now=WATCHED + 10,
    )
    d2 = account_source(d1.state, snap(), source="s", first_watched=WATCHED, now=WATCHED + 20)
    assert [s.key for s in d2.closed] == ["id:1"]
    assert d2.state == {} and d2.deltas == {}


def test_a_duplicated_line_in_one_snapshot_counts_once():
    r = row("a", 1, WATCHED + 1, 100, 10)
    totals, _ = run([(WATCHED + 10, snap(r, r))])
    assert totals == {"a": [100, 10]}


def test_two_rows_of_one_client_id_in_one_snapshot_count_the_first():
    """OpenVPN never writes one; docs/accounting.md says what happens if a status does."""
    first, second = row("a", 1, WATCHED + 1, 100, 10), row("b", 1, WATCHED + 2, 7, 7)
    totals, state = run([(WATCHED + 10, snap(first, second))])
    assert totals == {"a": [100, 10]}
    assert [s.common_name for s in state.values()] == ["a"]


def test_clients_sum_over_sources():
    d1 = account_source(
        {},
        snap(row("a", 1, WATCHED + 1, 1000, 500)),
        source="udp",
        first_watched=WATCHED,
        now=WATCHED + 10,
    )
    d2 = account_source(
        {},
        snap(row("a", 2, WATCHED + 1, 2000, 0)),
        source="tcp",
        first_watched=WATCHED,
        now=WATCHED + 10,
    )
    clients = merge_sources([d1, d2])
    assert clients == {"a": [3000, 500]}


def test_idle_sessions_count_zero_and_moves_are_noticed():
    first = account_source(
        {},
        snap(row("a", 1, WATCHED + 1, 10, 5)),
        source="s",
        first_watched=WATCHED,
        now=WATCHED + 10,
    )
    idle = account_source(
        first.state,
        snap(row("a", 1, WATCHED + 1, 10, 5)),
        source="s",
        first_watched=WATCHED,
        now=WATCHED + 20,
    )
    assert idle.moved == [] and idle.closed == [] and idle.deltas == {"a": [0, 0]}
    floated = SessionRow("a", "127.0.0.9:1", "10.98.0.2", "", 12, 5, WATCHED + 1, 1)
    moved = account_source(
        idle.state, snap(floated), source="s", first_watched=WATCHED, now=WATCHED + 30
    )
    assert [s.real_address for s in moved.moved] == ["127.0.0.9:1"]
    assert moved.deltas == {"a": [2, 0]}
    [session] = moved.state.values()
    assert (session.bytes_received, session.bytes_sent, session.last_seen) == (12, 5, WATCHED + 30)


def test_counters_line_up_with_the_open_sessions_whichever_parser_answered():
    """What the store packs: every open session's counters in ``state``'s order, taken from the
    fast parser's columns when they line up, read from the sessions otherwise (a duplicated line,
    the line-by-line parser); the same answer every way."""
    rows = [row("a", 1, WATCHED + 1, 10, 1), row("b", 2, WATCHED + 2, 20, 2)]
    texts = {
        "columns": render_status(rows, WATCHED + 10),
        "duplicated line": render_status([*rows, rows[0]], WATCHED + 10),
        "version 1": render_status(rows, WATCHED + 10, version=1),
    }
    for how, text in texts.items():
        delta = account_source(
            {}, parse_status(text), source="s", first_watched=WATCHED, now=WATCHED + 10
        )
        assert (delta.columns is not None) == (how == "columns"), how
        sessions = list(delta.state.values())
        assert delta.counters() == ([10, 20], [1, 2]), how
        assert [(s.bytes_received, s.bytes_sent) for s in sessions] == [(10, 1), (20, 2)], how
