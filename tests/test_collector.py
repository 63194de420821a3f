"""The collector on real SQLite files, real status text and a fake clock."""

import logging
import sqlite3

import pytest
from conftest import FakeClock, as_nobody, fixture_text, insert_client, needs_root, row
from schema_v3 import as_schema_3
from sqlalchemy import event, inspect, select

from ovpnmon_collector.collector import Collector
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.store import Store
from ovpnmon_common import meta, schema, storage
from ovpnmon_common.counters import Counters
from ovpnmon_common.storage import migrations
from ovpnmon_common.storage.engines import writer_engine
from ovpnmon_common.storage.migrations import init_db
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import render_status

T0 = 1_795_717_500


class StatusFile:
    def __init__(self, path):
        self.path = path

    def write(self, now, *rows, version=3):
        self.path.write_text(render_status(rows, now, version))


@pytest.fixture
def status(tmp_path):
    return StatusFile(tmp_path / "status.log")


def make(engine, status, clock, **kw):
    return Collector(
        Store(engine), [StatusFileSource("udp", str(status.path), settle=0)], clock=clock, **kw
    )


def totals(engine):
    with engine.connect() as conn:
        return lifetime_totals(conn)


def samples(engine, table=schema.usage_history):
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key.columns))]


def test_first_start_takes_connected_sessions_as_baseline(engine, status):
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 - 3600, 50_000, 9_000))
    collector = make(engine, status, clock)
    assert collector.poll().stored
    assert totals(engine) == {"alice": (0, 0, True)}  # no historical spike
    clock.advance(10)
    status.write(
        clock.wall, row("alice", 0, T0 - 3600, 50_500, 9_100), row("bob", 1, T0 + 5, 300, 30)
    )
    collector.poll()
    assert totals(engine) == {"alice": (500, 100, True), "bob": (300, 30, True)}


def test_every_active_client_gets_a_raw_row_even_with_zero_bytes(engine, status):
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 + 1, 10, 1))
    collector = make(engine, status, clock)
    collector.poll()
    clock.advance(10)
    status.write(clock.wall, row("alice", 0, T0 + 1, 10, 1))  # idle
    collector.poll()
    assert [(ts, rx, tx) for _, ts, rx, tx in samples(engine)] == [(T0, 10, 1), (T0 + 10, 0, 0)]
    assert [(ts, rx, tx, n) for ts, _, rx, tx, n, _ in samples(engine, schema.global_history)] == [
        (T0, 10, 1, 1),
        (T0 + 10, 0, 0, 1),
    ]


def test_restart_continues_without_loss_or_double_counting(db_path, status):
    clock = FakeClock(T0)
    engine = writer_engine(db_path)
    init_db(engine)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10))
    make(engine, status, clock).poll()
    clock.advance(10)
    status.write(clock.wall, row("alice", 0, T0 + 1, 250, 20))
    make(engine, status, clock).poll()  # a new process: state comes from the database
    clock.advance(60)  # down for a minute: alice reconnected meanwhile, bob came and stayed
    status.write(clock.wall, row("alice", 1, T0 + 30, 40, 4), row("bob", 2, T0 + 40, 900, 90))
    make(engine, status, clock).poll()
    assert totals(engine) == {"alice": (290, 24, True), "bob": (900, 90, True)}
    with engine.connect() as conn:
        s = schema.sessions
        rows = conn.execute(select(s.c.session_key, s.c.disconnected_at).order_by(s.c.id)).all()
    assert rows == [("id:0", T0 + 70), ("id:1", None), ("id:2", None)]


def test_disconnect_marks_client_inactive_and_closes_session(engine, status):
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10), row("bob", 1, T0 + 1, 5, 5))
    collector = make(engine, status, clock)
    collector.poll()
    clock.advance(10)
    status.write(clock.wall, row("bob", 1, T0 + 1, 6, 6))
    collector.poll()
    assert totals(engine) == {"alice": (100, 10, False), "bob": (6, 6, True)}
    with engine.connect() as conn:
        c = schema.clients
        last_seen = conn.execute(select(c.c.last_seen).where(c.c.common_name == "alice")).scalar()
    assert last_seen == T0  # the last poll that saw her


def test_two_sources_share_a_common_name(engine, tmp_path):
    clock = FakeClock(T0)
    udp, tcp = StatusFile(tmp_path / "udp.log"), StatusFile(tmp_path / "tcp.log")
    collector = Collector(
        Store(engine),
        [
            StatusFileSource("udp", str(udp.path), settle=0),
            StatusFileSource("tcp", str(tcp.path), settle=0),
        ],
        clock=clock,
    )

    def on_tcp(rx, tx):  # another instance serves another subnet
        return row("alice", 0, T0 + 1, rx, tx)._replace(virtual_address="10.99.0.2")

    udp.write(T0, row("alice", 0, T0 + 1, 100, 1))
    tcp.write(T0, on_tcp(200, 2))  # the same client id, time and address on another instance
    collector.poll()
    clock.advance(10)
    udp.write(clock.wall, row("alice", 0, T0 + 1, 150, 1))
    tcp.write(clock.wall, on_tcp(260, 2))
    collector.poll()
    assert totals(engine)["alice"][:2] == (410, 3)
    assert [(rx, tx) for _, _, rx, tx in samples(engine)] == [(300, 3), (110, 0)]


@pytest.mark.parametrize("version", [1, 2, 3])
def test_every_status_version_accounts_the_same(engine, status, version):
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10), version=version)
    collector = make(engine, status, clock)
    collector.poll()
    clock.advance(10)
    status.write(clock.wall, row("alice", 0, T0 + 1, 160, 20), version=version)
    collector.poll()
    assert totals(engine) == {"alice": (160, 20, True)}


def health(engine, name="udp"):
    with engine.connect() as conn:
        return meta.read_status(conn).sources[name]


def test_missing_file_is_reported_and_retried_without_losing_anything(engine, status, caplog):
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10))
    collector = make(engine, status, clock)
    collector.poll()
    status.path.unlink()
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        clock.advance(10)
        summary = collector.poll()
    assert summary.failed == {
        "udp": f"status file {status.path} does not exist (is OpenVPN running?)"
    }
    assert health(engine)["state"] == "error"
    assert (
        sum("does not exist" in r.message for r in caplog.records) == 1
    )  # logged once, not per poll
    assert totals(engine) == {"alice": (100, 10, True)}  # its session is not assumed closed
    clock.advance(10)
    status.write(clock.wall, row("alice", 0, T0 + 1, 400, 40))
    collector.poll()
    assert totals(engine) == {"alice": (400, 40, True)}
    assert health(engine) == {
        "state": "ok",
        "message": "",
        "since": clock.wall,
        "last_ok": clock.wall,
    }


def test_half_written_file_records_nothing(engine, status):
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10))
    collector = make(engine, status, clock)
    collector.poll()
    clock.advance(10)
    full = render_status([row("alice", 0, T0 + 1, 999, 99)], int(clock.wall))
    status.path.write_text(full[: full.index("HEADER\tROUTING_TABLE")])
    summary = collector.poll()
    assert "no final END line" in summary.failed["udp"]
    assert totals(engine) == {"alice": (100, 10, True)}
    assert len(samples(engine)) == 1


def test_malformed_file_is_an_error_with_its_line(engine, status):
    status.path.write_text(
        fixture_text("v2_duplicate_cn_three_sessions.txt").replace(",1888,", ",x,")
    )
    summary = make(engine, status, FakeClock(T0)).poll()
    assert summary.failed["udp"] == "line 4: Bytes Received is not a whole number: 'x'"
    assert summary.stored and totals(engine) == {}


def test_stale_file_is_not_used(engine, status):
    clock = FakeClock(T0)
    status.write(T0 - 900, row("alice", 0, T0 - 1000, 100, 10))
    collector = make(engine, status, clock, stale_after={"udp": 300})
    summary = collector.poll()
    assert summary.failed["udp"] == (
        "status file is stale: OpenVPN last wrote it at 2026-11-26 18:10:00 UTC, more than 300 s "
        "ago; is OpenVPN running, and is its 'status' interval shorter than stale_after?"
    )
    assert health(engine)["state"] == "error"
    # the same message poll after poll (it is logged once), while the file stays as it was
    clock.advance(10)
    assert collector.poll().failed["udp"] == summary.failed["udp"]


def test_locked_database_loses_nothing(db_path, status):
    clock = FakeClock(T0)
    engine = writer_engine(db_path, busy_timeout_ms=50)
    init_db(engine)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10))
    collector = make(engine, status, clock)
    collector.poll()
    other = writer_engine(db_path)
    with other.begin() as conn:  # another writer holds the lock for the whole poll
        if conn.dialect.name == "sqlite":
            meta.put(conn, "lock", "held")
            expected = "database is locked"
        else:
            conn.exec_driver_sql("LOCK TABLE meta IN ACCESS EXCLUSIVE MODE")
            expected = "canceling statement due to lock timeout"
        clock.advance(10)
        status.write(clock.wall, row("alice", 0, T0 + 1, 300, 30))
        summary = collector.poll()
    assert not summary.stored
    assert summary.error == f"database write failed, will retry next poll: {expected}"
    assert totals(engine) == {"alice": (100, 10, True)}
    clock.advance(10)
    status.write(clock.wall, row("alice", 0, T0 + 1, 350, 35))
    assert collector.poll().stored
    assert totals(engine) == {"alice": (350, 35, True)}  # the locked poll's bytes arrive now


def test_wall_clock_steps_never_give_negative_or_infinite_rates(engine, status):
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10))
    collector = make(engine, status, clock)
    collector.poll()
    clock.wall -= 3600  # NTP steps the wall clock back an hour; monotonic moves on
    clock.mono += 10
    status.write(int(clock.wall), row("alice", 0, T0 + 1, 200, 20))
    collector.poll()
    clock.wall += 86400  # and forward a day
    clock.mono += 10
    status.write(int(clock.wall), row("alice", 0, T0 + 1, 300, 30))
    collector.poll()
    assert totals(engine) == {"alice": (300, 30, True)}
    with engine.connect() as conn:
        g = schema.global_history
        intervals = [r.interval for r in conn.execute(select(g).order_by(g.c.ts))]
    # monotonic intervals: the first poll has none (0: rate 0), the wall-clock steps do not show
    assert intervals == [10.0, 0.0, 10.0]
    assert [ts for _, ts, *_ in samples(engine)] == sorted(
        [T0, T0 - 3600, T0 - 3600 + 86400]
    )  # buckets land where the clock says


def test_two_polls_in_one_second_add_up(engine, status):
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 - 100, 100, 10))
    collector = make(engine, status, clock)
    collector.poll()
    status.write(T0, row("alice", 0, T0 - 100, 150, 15))
    clock.mono += 0.5
    collector.poll()
    assert [(ts, rx, tx) for _, ts, rx, tx in samples(engine)] == [(T0, 50, 5)]


@pytest.mark.root
@needs_root
def test_unreadable_status_file_names_the_fix(status):
    status.write(T0, row("alice", 0, T0 + 1, 100, 10))
    status.path.chmod(0o600)  # as OpenVPN creates it, owned by root
    source = StatusFileSource("udp", str(status.path))
    result = as_nobody(source.read)
    assert result == (
        f"ERROR SourceError: status file {status.path}: permission denied (see the deployment "
        "guide on giving the collector read access)"
    )


def test_schema_1_database_upgrades_and_continues_exactly(tmp_path, status):
    """Schema 1 kept open sessions' counters in their sessions rows; version 2 moved them to one
    packed row per source. A version-1 database (made here by moving the packed counters back,
    dropping the table, and restoring version 1's index and raw-sample key) upgrades in place,
    keeps every raw sample, and the next poll counts only new bytes."""
    path = str(tmp_path / "v1.db")
    engine = writer_engine(path)
    init_db(engine)
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10), row("bob", 1, T0 + 1, 7, 7))
    collector = make(engine, status, clock)
    assert collector.poll().stored
    clock.advance(10)
    status.write(int(clock.wall), row("alice", 0, T0 + 1, 300, 30), row("bob", 1, T0 + 1, 7, 7))
    assert collector.poll().stored
    collector.close()
    assert totals(engine) == {"alice": (300, 30, True), "bob": (7, 7, True)}
    as_schema_3(engine)
    s = schema.sessions
    with engine.begin() as conn:
        [(packed,)] = conn.execute(select(schema.session_counters.c.counters))
        for row_id, (rx, tx) in Counters(packed).items():
            conn.execute(
                s.update().where(s.c.id == row_id).values(bytes_received=rx, bytes_sent=tx)
            )
        schema.session_counters.drop(conn)
        conn.exec_driver_sql("ALTER TABLE usage_history RENAME TO new_usage")
        conn.exec_driver_sql(
            "CREATE TABLE usage_history (client_id INTEGER NOT NULL REFERENCES clients (id),"
            " ts BIGINT NOT NULL, bytes_received BIGINT NOT NULL, bytes_sent BIGINT NOT NULL,"
            " CONSTRAINT pk_usage_history PRIMARY KEY (client_id, ts)) WITHOUT ROWID"
        )
        conn.exec_driver_sql("INSERT INTO usage_history SELECT * FROM new_usage")
        conn.exec_driver_sql("DROP TABLE new_usage")
        conn.exec_driver_sql("DROP INDEX ix_sessions_open")
        conn.exec_driver_sql("DROP INDEX ix_sessions_connected_since")
        conn.exec_driver_sql(
            "CREATE INDEX ix_sessions_disconnected_at ON sessions (disconnected_at)"
        )
        meta.put(conn, "schema_version", "1")
    engine.dispose()

    engine = writer_engine(path)
    with pytest.raises(storage.DatabaseError, match="older than this ovpnmon needs"):
        migrations.check_schema(engine, path)
    raw = samples(engine)
    assert init_db(engine) == (1, schema.SCHEMA_VERSION)
    assert totals(engine) == {"alice": (300, 30, True), "bob": (7, 7, True)}
    assert sorted(samples(engine)) == sorted(raw)  # every raw sample, now keyed (ts, client_id)
    with engine.connect() as conn:
        key = inspect(conn).get_pk_constraint("usage_history")["constrained_columns"]
        assert key == ["ts", "client_id"]
        assert inspect(conn).get_foreign_keys("usage_history") == []
    clock.advance(10)
    status.write(int(clock.wall), row("alice", 0, T0 + 1, 350, 31), row("bob", 1, T0 + 1, 7, 9))
    collector = make(engine, status, clock)
    assert collector.poll().stored
    assert totals(engine) == {"alice": (350, 31, True), "bob": (7, 9, True)}
    collector.close()
    with engine.connect() as conn:
        indexes = {ix["name"] for ix in inspect(conn).get_indexes("sessions")}
    assert "ix_sessions_open" in indexes and "ix_sessions_disconnected_at" not in indexes


def client_ids(engine):
    with engine.connect() as conn:
        c = schema.clients
        return dict(conn.execute(select(c.c.common_name, c.c.id)).all())


def test_a_client_back_after_a_restart_keeps_its_row(db_path, status):
    """The collector knows every stored client's id from its start: one who was away when it
    restarted comes back to the same row (and totals), and a new one gets a row of its own."""
    clock = FakeClock(T0)
    engine = writer_engine(db_path)
    init_db(engine)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10), row("bob", 1, T0 + 1, 5, 5))
    make(engine, status, clock).poll()
    clock.advance(10)
    status.write(clock.wall, row("bob", 1, T0 + 1, 7, 7))  # alice leaves
    make(engine, status, clock).poll()
    before = client_ids(engine)
    clock.advance(10)
    status.write(
        clock.wall,
        row("bob", 1, T0 + 1, 9, 9),
        row("alice", 2, T0 + 15, 40, 4),  # back, in a new session
        row("carol", 3, T0 + 16, 1, 1),
    )
    assert make(engine, status, clock).poll().stored  # a new process
    after = client_ids(engine)
    assert {name: after[name] for name in before} == before
    assert len(set(after.values())) == 3
    assert totals(engine) == {"alice": (140, 14, True), "bob": (9, 9, True), "carol": (1, 1, True)}
    by_id = {cid: name for name, cid in after.items()}
    last = [(by_id[cid], rx) for cid, ts, rx, _ in samples(engine) if ts == clock.wall]
    assert sorted(last) == [("alice", 40), ("bob", 2), ("carol", 1)]


def test_ids_handed_out_in_a_failed_poll_are_not_reused_wrongly(engine, status):
    """A write that fails after new clients and sessions got their ids rolls those back; the next
    poll must not write samples under ids that no longer exist."""
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10))
    collector = make(engine, status, clock)
    collector.poll()
    calls = []

    def fail_once(conn, cursor, statement, parameters, context, executemany):
        # the samples come after the new client's and session's rows, in the same transaction
        if statement.startswith("INSERT INTO usage_history"):
            calls.append(1)
            if len(calls) == 1:
                raise sqlite3.OperationalError("disk I/O error")

    event.listen(engine, "before_cursor_execute", fail_once)
    clock.advance(10)
    status.write(clock.wall, row("alice", 0, T0 + 1, 150, 15), row("bob", 1, T0 + 5, 20, 2))
    summary = collector.poll()
    assert not summary.stored and "disk I/O error" in summary.error
    clock.advance(10)
    status.write(
        clock.wall,
        row("alice", 0, T0 + 1, 160, 16),
        row("bob", 1, T0 + 5, 30, 3),
        row("carol", 2, T0 + 12, 8, 8),
    )
    assert collector.poll().stored
    ids = client_ids(engine)
    assert len(set(ids.values())) == 3
    stored = {cid for cid, *_ in samples(engine)}
    assert stored <= set(ids.values())
    assert totals(engine) == {"alice": (160, 16, True), "bob": (30, 3, True), "carol": (8, 8, True)}


def test_a_restarted_openvpn_handing_out_the_same_client_id_is_a_new_session(engine, status):
    clock = FakeClock(T0)
    status.write(T0, row("alice", 0, T0 + 1, 100, 10))
    collector = make(engine, status, clock)
    collector.poll()
    clock.advance(10)
    status.write(clock.wall, row("alice", 0, T0 + 5, 30, 3))  # OpenVPN restarted: id 0 again
    assert collector.poll().stored
    assert totals(engine) == {"alice": (130, 13, True)}
    with engine.connect() as conn:
        s = schema.sessions
        rows = conn.execute(
            select(s.c.session_key, s.c.connected_since, s.c.disconnected_at).order_by(s.c.id)
        ).all()
    assert [tuple(r) for r in rows] == [("id:0", T0 + 1, T0 + 10), ("id:0", T0 + 5, None)]


def test_a_client_added_behind_the_collectors_back_fails_one_poll_cleanly(db_path, status):
    """The collector knows every client's id from its start; a second writer (not supported)
    adding one meanwhile makes one poll fail with a clear message, and the next one recovers."""
    clock = FakeClock(T0)
    engine = writer_engine(db_path)
    init_db(engine)
    status.write(T0)
    collector = make(engine, status, clock)
    assert collector.poll().stored  # state and client ids loaded: none yet
    insert_client(writer_engine(db_path), "carol", seen=T0)  # another writer
    clock.advance(10)
    status.write(clock.wall, row("carol", 0, T0 + 5, 10, 1))
    summary = collector.poll()
    assert not summary.stored
    duplicate = {
        "sqlite": "UNIQUE constraint failed: clients.common_name, clients.host_id",
        "postgresql": 'duplicate key value violates unique constraint "uq_clients_common_name_host_id"'
        " (Key (common_name, host_id)=(carol, 1) already exists.)",
    }[engine.dialect.name]
    assert summary.error == (f"database write failed, will retry next poll: {duplicate}")
    clock.advance(10)
    status.write(clock.wall, row("carol", 0, T0 + 5, 30, 3))
    assert collector.poll().stored
    assert totals(engine) == {"carol": (30, 3, True)}  # nothing of hers lost
    assert len(client_ids(engine)) == 1


def test_stored_active_flags_are_checked_against_every_client_after_a_start(db_path, status):
    """The first poll of a process compares the stored flags with every client (a flag left
    wrong by an older version or a hand edit is mended); later polls look only at clients whose
    sessions opened or closed."""
    clock = FakeClock(T0)
    engine = writer_engine(db_path)
    init_db(engine)
    status.write(T0, row("alice", 0, T0 + 1, 10, 1))
    make(engine, status, clock).poll()
    insert_client(engine, "ghost", active=True, seen=T0)  # marked active, with no session anywhere
    collector = make(engine, status, clock)  # a new process
    clock.advance(10)
    status.write(clock.wall, row("alice", 0, T0 + 1, 20, 2), row("bob", 1, T0 + 12, 5, 5))
    assert collector.poll().stored
    assert totals(engine) == {"alice": (20, 2, True), "bob": (5, 5, True), "ghost": (0, 0, False)}
    clock.advance(10)
    status.write(clock.wall, row("bob", 1, T0 + 12, 6, 6))  # alice leaves: an event
    assert collector.poll().stored
    assert totals(engine) == {"alice": (20, 2, False), "bob": (6, 6, True), "ghost": (0, 0, False)}


def test_a_restart_loads_its_hosts_open_sessions_through_the_open_sessions_index(db_path, tmp_path):
    """A collector (re)starting reads its host's open sessions. Filtered on the sessions' host,
    SQLite read every session the host ever had (0.95 s for a year of 10,000 clients); it now
    goes from the host's clients into ``ix_sessions_open``, and still loads exactly its own
    host's open sessions when two hosts share the database."""
    clock = FakeClock(T0)
    engine = writer_engine(db_path)
    init_db(engine)
    files = {host: StatusFile(tmp_path / f"{host}.log") for host in ("vpn1", "vpn2")}
    files["vpn1"].write(T0, row("alice", 0, T0 + 1, 100, 10), row("carol", 1, T0 + 2, 5, 5))
    files["vpn2"].write(T0, row("alice", 0, T0 + 1, 700, 70))

    def collector(host):
        source = StatusFileSource("udp", str(files[host].path), settle=0)
        return Collector(Store(engine, host), [source], clock=clock)

    for host in files:
        collector(host).poll()
    statements = []

    def seen(conn, cursor, statement, parameters, context, executemany):
        if "disconnected_at IS NULL" in statement:
            statements.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", seen)
    try:
        loaded = Store(engine, "vpn2").load_open_sessions(T0 + 10)
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert {(s.common_name, s.bytes_received) for s in loaded["udp"].values()} == {("alice", 700)}
    ((statement, parameters),) = statements
    if engine.dialect.name != "sqlite":
        return  # PostgreSQL plans from its statistics; the choice above is SQLite's
    with engine.connect() as conn:
        plan = [r[3] for r in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {statement}", parameters)]
    assert any("sessions USING INDEX ix_sessions_open (client_id=?" in step for step in plan), plan
