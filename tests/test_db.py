import os
import shutil
import sqlite3
import tempfile

import pytest
import sqlalchemy
from conftest import as_nobody, insert_client, needs_root
from sqlalchemy import bindparam, event, func, insert, select
from sqlalchemy.exc import (
    DBAPIError,
    MultipleResultsFound,
    NoResultFound,
    OperationalError,
)

from ovpnmon_common import meta, schema
from ovpnmon_common.storage import DatabaseError, engines, migrations, statements
from ovpnmon_common.storage.engines import reader_engine, writer_engine
from ovpnmon_common.storage.migrations import check_schema, init_db


@pytest.mark.sqlite_only  # PostgreSQL's engines: test_postgres.py
def test_writer_pragmas(engine):
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == engines.BUSY_TIMEOUT_MS
        assert conn.exec_driver_sql("PRAGMA auto_vacuum").scalar() == 2  # incremental


def test_init_db_is_idempotent(engine):
    assert init_db(engine) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
    with engine.connect() as conn:
        rows = conn.execute(
            select(func.count())
            .select_from(schema.meta)
            .where(schema.meta.c.key == "schema_version")
        ).scalar()
        assert rows == 1
        assert migrations.schema_version(conn) == schema.SCHEMA_VERSION


def test_reader_cannot_write(engine, db_path):
    reader = reader_engine(db_path)
    with reader.connect() as conn:
        if conn.dialect.name == "sqlite":
            assert conn.exec_driver_sql("PRAGMA query_only").scalar() == 1
        with pytest.raises(DBAPIError, match=r"readonly|read-only|query_only"):
            conn.execute(insert(schema.meta).values(key="x", value="y"))
    with reader.connect() as conn:
        assert meta.get(conn, "x") is None
    reader.dispose()


def test_reader_uri_is_read_only_and_quoted(tmp_path):
    uri = engines.reader_uri(str(tmp_path / "a b?c.db"))
    assert uri.startswith("file:/") and uri.endswith("?mode=ro")
    assert "a%20b%3Fc.db" in uri and "immutable" not in uri


def test_check_schema_messages(tmp_path):
    missing = str(tmp_path / "missing.db")
    with pytest.raises(
        DatabaseError, match=r"cannot read database .*missing.db: unable to open database file"
    ):
        check_schema(reader_engine(missing), missing)
    assert not os.path.exists(missing)  # a reader never creates the file

    empty = str(tmp_path / "empty.db")
    writer = writer_engine(empty)
    with writer.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE other (x)")
    with pytest.raises(
        DatabaseError, match="has no ovpnmon schema: run 'ovpnmon-collector init-db'"
    ):
        check_schema(reader_engine(empty), empty)


def test_newer_schema_is_refused(engine, db_path):
    with engine.begin() as conn:
        meta.put(conn, "schema_version", str(schema.SCHEMA_VERSION + 1))
    with pytest.raises(DatabaseError, match="newer than this ovpnmon understands"):
        check_schema(reader_engine(db_path), db_path)
    with pytest.raises(DatabaseError, match="upgrade ovpnmon"):
        init_db(engine)


def test_upsert_merges(engine):
    t = schema.global_15min
    row = {
        "bucket": 900,
        "host_id": 1,
        "bytes_received": 5,
        "bytes_sent": 7,
        "max_active": 2,
        "samples": 1,
    }
    merge = {"bytes_received": "add", "bytes_sent": "add", "max_active": "max", "samples": "add"}
    with engine.begin() as conn:
        statements.upsert(conn, t, [row], ["bucket", "host_id"], merge=merge)
        statements.upsert(conn, t, [{**row, "max_active": 1}], ["bucket", "host_id"], merge=merge)
        statements.upsert(
            conn,
            t,
            [{**row, "bucket": 1800}],
            ["bucket", "host_id"],
            merge={k: "keep" for k in merge},
        )
        statements.upsert(
            conn,
            t,
            [{**row, "bucket": 1800, "samples": 9}],
            ["bucket", "host_id"],
            merge={k: "keep" for k in merge},
        )
        got = conn.execute(select(t).order_by(t.c.bucket)).all()
    assert [tuple(r) for r in got] == [(900, 1, 10, 14, 2, 2), (1800, 1, 5, 7, 2, 1)]


SAMPLE_COLUMNS = ("client_id", "ts", "bytes_received", "bytes_sent")
ADD = {"bytes_received": "add", "bytes_sent": "add"}


@pytest.mark.parametrize("count", [1, 99, 100, 101, 250, 1000])
def test_upsert_tuples_stores_every_row_whatever_the_count(engine, count):
    """Whole multi-row statements, a remainder, or both: each row lands in its own columns, and a
    second upsert of the same keys adds (two polls within one second)."""
    rows = [(client, 60, 1000 + client, 7 * client) for client in range(count, 0, -1)]
    u = schema.usage_history
    with engine.begin() as conn:
        statements.upsert_tuples(conn, u, SAMPLE_COLUMNS, rows, ["ts", "client_id"], merge=ADD)
        statements.upsert_tuples(conn, u, SAMPLE_COLUMNS, rows[:3], ["ts", "client_id"], merge=ADD)
        got = conn.execute(
            select(u.c.client_id, u.c.ts, u.c.bytes_received, u.c.bytes_sent).order_by(
                u.c.client_id
            )
        ).all()
    twice = {client for client, *_ in rows[:3]}
    expected = [
        (c, 60, (1000 + c) * (2 if c in twice else 1), 7 * c * (2 if c in twice else 1))
        for c in range(1, count + 1)
    ]
    assert [tuple(r) for r in got] == expected


def test_upsert_tuples_refuses_rows_of_the_wrong_width(engine):
    rows = [(client, 60, 1, 2) for client in range(1, 200)]
    rows[50] = (51, 60, 1)  # one value short would shift every later value one column
    with engine.begin() as conn, pytest.raises(ValueError, match="every row must have 4 values"):
        statements.upsert_tuples(
            conn, schema.usage_history, SAMPLE_COLUMNS, rows, ["ts", "client_id"]
        )
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.usage_history)).scalar() == 0


def test_insert_tuples_of_a_wide_table_stays_within_sqlites_parameter_limit(engine):
    """Sessions have 15 columns: 66 rows a statement (990 parameters), then a remainder."""
    clients = [(cid, f"cn-{cid}", 1, 0, 0, False, 0, 0) for cid in (1, 2, 3)]
    columns = tuple(col.name for col in schema.sessions.columns if col.name != "disconnected_at")
    sessions = [
        (
            n,
            1,
            "udp",
            f"id:{n}",
            1000 + n,
            n % 3 + 1,
            "127.0.0.1:1",
            "10.8.0.2",
            "",
            5,
            6,
            n,
            2 * n,
            0,
            0,
        )
        for n in range(1, 151)
    ]
    with engine.begin() as conn:
        statements.insert_tuples(
            conn, schema.clients, tuple(c.name for c in schema.clients.columns), clients
        )
        statements.insert_tuples(conn, schema.sessions, columns, sessions)
        s = schema.sessions
        got = conn.execute(select(*(s.c[name] for name in columns)).order_by(s.c.id)).all()
    assert [tuple(r) for r in got] == sessions


# --- an unprivileged reader, as under the API's systemd unit ------------------------------------


def _read_as_nobody(path: str) -> str:
    """Read through the reader engine as uid 65534; returns 'value|refused' (or the error)."""
    reader = reader_engine(
        path
    )  # built before the fork: the child cannot read root's site-packages

    def probe() -> str:
        with reader.connect() as conn:
            value = meta.get(conn, "probe")
            try:
                conn.execute(insert(schema.meta).values(key="w", value="w"))
                outcome = "WROTE"
            except OperationalError:
                outcome = "refused"
        return f"{value}|{outcome}"

    return as_nobody(probe)


@pytest.fixture
def shared_dir():
    """A directory nobody may read but not write (tmp_path's parents are root-only)."""
    path = tempfile.mkdtemp(prefix="ovpnmon-ro-", dir="/tmp")
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.root
@needs_root
def test_unprivileged_reader_while_writer_active_and_after_stop(shared_dir):
    path = os.path.join(shared_dir, "ovpnmon.db")
    writer = writer_engine(path)
    init_db(writer)
    with writer.begin() as conn:
        meta.put(conn, "probe", "one")
    for name in os.listdir(shared_dir):
        os.chmod(os.path.join(shared_dir, name), 0o644)
    # the writer is active: it holds a connection, -wal and -shm exist and belong to root
    held = writer.raw_connection()
    try:
        held.execute("SELECT 1").fetchall()
        assert os.path.exists(path + "-shm")
        assert _read_as_nobody(path) == "one|refused"
        with writer.begin() as conn:
            meta.put(conn, "probe", "two")
        assert _read_as_nobody(path) == "two|refused"
    finally:
        held.close()

    # the collector stopped cleanly (Store.close leaves rollback-journal mode)
    from ovpnmon_collector.store import Store

    Store(writer).close()
    assert not os.path.exists(path + "-shm")
    assert _read_as_nobody(path) == "two|refused"

    # the collector starts again and writes while the reader keeps working
    writer = writer_engine(path)
    with writer.begin() as conn:
        meta.put(conn, "probe", "three")
    for name in os.listdir(shared_dir):
        os.chmod(os.path.join(shared_dir, name), 0o644)
    assert _read_as_nobody(path) == "three|refused"
    writer.dispose()


def test_upgrade_to_6_gives_the_tiers_a_covering_time_index(engine):
    """5 -> 6: each per-client tier's ``(bucket)`` index becomes ``(bucket, client_id,
    bytes_received, bytes_sent)``; again, nothing changes."""
    tables = (schema.stats_15min, schema.stats_hourly, schema.stats_6h, schema.stats_daily)
    with engine.begin() as conn:  # a schema-5 database
        for table in tables:
            for index in table.indexes:
                index.drop(conn)
            conn.exec_driver_sql(f"CREATE INDEX ix_{table.name}_bucket ON {table.name} (bucket)")
        meta.put(conn, meta.SCHEMA_VERSION, "5")

    def indexes():
        found = sqlalchemy.inspect(engine)
        return {
            t.name: [(i["name"], i["column_names"]) for i in found.get_indexes(t.name)]
            for t in tables
        }

    assert indexes()["stats_6h"] == [("ix_stats_6h_bucket", ["bucket"])]
    assert init_db(engine) == (5, schema.SCHEMA_VERSION)
    want = ["bucket", "client_id", "bytes_received", "bytes_sent"]
    assert indexes() == {t.name: [(f"ix_{t.name}_{'_'.join(want)}", want)] for t in tables}
    assert init_db(engine) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
    assert indexes() == {t.name: [(f"ix_{t.name}_{'_'.join(want)}", want)] for t in tables}


def test_upgrade_to_7_puts_disconnected_at_into_the_open_sessions_index(engine):
    """6 -> 7: ``ix_sessions_open`` gains ``disconnected_at`` between its two columns; nothing
    else changes, and a second init-db does nothing."""
    with engine.begin() as conn:  # a schema-6 database
        _open_index_as(conn, 6, "client_id", "connected_since")

    assert _open_index(engine) == [["client_id", "connected_since"]]
    assert init_db(engine) == (6, schema.SCHEMA_VERSION)
    current = ["client_id", "disconnected_at", "connected_since", *schema.OPEN_COVERED]
    assert _open_index(engine) == [current]
    assert init_db(engine) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
    assert _open_index(engine) == [current]


def _open_index_as(conn, version: int, *columns: str) -> None:
    """The database as schema ``version`` left it, whose ``ix_sessions_open`` had ``columns``."""
    conn.exec_driver_sql("DROP INDEX ix_sessions_open")
    conn.exec_driver_sql(
        f"CREATE INDEX ix_sessions_open ON sessions ({', '.join(columns)}) "
        "WHERE disconnected_at IS NULL"
    )
    meta.put(conn, meta.SCHEMA_VERSION, str(version))


def _open_index(engine) -> list[list[str]]:
    """The columns of ``ix_sessions_open`` (none if it is missing)."""
    found = sqlalchemy.inspect(engine).get_indexes("sessions")
    return [i["column_names"] for i in found if i["name"] == "ix_sessions_open"]


def test_upgrade_to_9_has_the_open_sessions_index_cover_lifetime_totals(tmp_path):
    """8 -> 9: ``ix_sessions_open`` also holds what lifetime totals read of every open session,
    and SQLite reads them from it alone (on schema 8 it looked each one up in the table);
    the sessions and every answer stay as they were."""
    from ovpnmon_common import totals

    engine = writer_engine(str(tmp_path / "nine.db"))
    init_db(engine)
    with engine.begin() as conn:  # a schema-8 database with an open and a closed session
        conn.execute(schema.hosts.insert(), [{"id": 1, "name": "vpn", "first_seen": 1}])
        conn.execute(
            schema.clients.insert(),
            [
                {
                    "id": 1,
                    "common_name": "alice",
                    "host_id": 1,
                    "first_seen": 10,
                    "last_seen": 20,
                    "active": True,
                    "closed_received": 5,
                    "closed_sent": 6,
                },
            ],
        )
        session = {"host_id": 1, "source": "s", "client_id": 1, "real_address": "",
                   "virtual_address": "", "virtual_ipv6": "", "first_seen": 10,
                   "last_seen": 20, "bytes_received": 900, "bytes_sent": 800,
                   "baseline_received": 100, "baseline_sent": 50}  # fmt: skip
        conn.execute(
            schema.sessions.insert(),
            [
                {**session, "session_key": "id:1", "connected_since": 10, "disconnected_at": None},
                {**session, "session_key": "id:2", "connected_since": 5, "disconnected_at": 9},
            ],
        )
        _open_index_as(conn, 8, "client_id", "disconnected_at", "connected_since")

    def read():
        with engine.connect() as conn:
            sql, constants = statements._compiled(conn, totals._OPEN_ALL.stmt, ())
            plan = [row[3] for row in conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", constants)]
            return plan, totals.live(conn), totals.system_totals(conn)

    plan, live, system = read()
    assert plan == ["SCAN sessions USING INDEX ix_sessions_open"]
    assert live == {1: totals.Live(800, 750, 1, 10)}
    assert init_db(engine) == (8, schema.SCHEMA_VERSION)
    key = ["client_id", "disconnected_at", "connected_since"]
    assert _open_index(engine) == [key + list(schema.OPEN_COVERED)]
    assert read() == (["SCAN sessions USING COVERING INDEX ix_sessions_open"], live, system)
    assert system == totals.SystemTotals(clients=1, active=1, received=805, sent=756)
    assert init_db(engine) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)
    engine.dispose()


def test_sqlite_reads_a_clients_open_sessions_through_the_open_sessions_index(tmp_path):
    """Without statistics SQLite's planner read one client's open sessions through the index of
    all its sessions (``(client_id, connected_since)``) when that index was created after
    ``ix_sessions_open``, as in a database whose sessions table an upgrade rebuilt: every
    session the client ever had, 1.9 ms for a year of them. Schema 7's ``ix_sessions_open``
    wins whatever the order."""
    from ovpnmon_api.read.clients import NAMED_OPEN_SESSIONS

    engine = writer_engine(str(tmp_path / "plan.db"))
    init_db(engine)
    with engine.begin() as conn:  # the index of every session created last
        (every,) = [
            i
            for i in schema.sessions.indexes
            if list(i.columns.keys()) == ["client_id", "connected_since"]
        ]
        every.drop(conn)
        every.create(conn)
    with engine.connect() as conn:
        sql, constants = statements._compiled(conn, NAMED_OPEN_SESSIONS.stmt, ())
        plan = conn.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}", {**constants, "name": "x"})
        steps = [row[3] for row in plan]
    engine.dispose()
    assert any("sessions USING INDEX ix_sessions_open (client_id=?" in s for s in steps), steps


def _months_of_days(conn) -> list[tuple]:
    """What ``stats_monthly`` must hold: every client's days summed by calendar month (UTC)."""
    from ovpnmon_common.buckets import month_start

    sums: dict[tuple[int, int], list[int]] = {}
    for cid, bucket, rx, tx, n in conn.execute(select(schema.stats_daily)).all():
        entry = sums.setdefault((cid, month_start(bucket)), [0, 0, 0])
        for i, value in enumerate((rx, tx, n)):
            entry[i] += value
    return sorted((*key, *values) for key, values in sums.items())


@pytest.mark.sqlite_only  # on PostgreSQL ``Prepared`` returns SQLAlchemy's result itself
def test_a_prepared_read_gives_the_rows_sqlalchemy_gives(engine):
    """``Prepared`` reads on SQLite through the driver (``statements.Rows``), not through
    SQLAlchemy's execution: the same rows, named the same, with the same answers to ``first``,
    ``one``, ``scalar`` and the rest, as SQLAlchemy's result of the same SQL."""
    m = schema.meta
    with engine.begin() as conn:
        for key, value in (("t.b", "2"), ("t.a", "1"), ("t.c", "3")):
            meta.put(conn, key, value)
    stmt = select(m.c.key, m.c.value).where(m.c.key.like(bindparam("like"))).order_by(m.c.key)
    read = statements.Prepared(stmt)
    executed = []
    event.listen(engine, "before_cursor_execute", lambda *args: executed.append(args[2]))
    with engine.connect() as conn:
        sql, _ = statements._compiled(conn, stmt, ())
        for like in ("t.%", "t.b", "none"):
            executed.clear()
            ours = read(conn, like=like)
            assert not [s for s in executed if s != "BEGIN IMMEDIATE"], "through the driver"
            theirs = conn.exec_driver_sql(sql, {"like": like}).all()
            assert [tuple(row) for row in ours.all()] == [tuple(row) for row in theirs]
            assert [(row.key, row[1], dict(row._mapping)) for row in read(conn, like=like)] == [
                (row.key, row[1], dict(row._mapping)) for row in theirs
            ]
            assert statements.plain_rows(read(conn, like=like)) == [tuple(r) for r in theirs]
            first = read(conn, like=like).first()
            assert (tuple(first) if first else None) == (tuple(theirs[0]) if theirs else None)
            assert read(conn, like=like).scalar() == (theirs[0][0] if theirs else None)
        assert read(conn, like="t.b").one().value == "2"
        assert read(conn, like="t.b").scalar_one() == "t.b"
        assert read(conn, like="none").one_or_none() is None
        with pytest.raises(MultipleResultsFound):
            read(conn, like="t.%").one_or_none()
        with pytest.raises(NoResultFound):
            read(conn, like="none").one()


@pytest.mark.sqlite_only  # PostgreSQL's reads: SQLAlchemy's own
def test_prepared_reads_of_one_transaction_see_one_snapshot(engine, db_path):
    """The API's reads of one request see one committed state while the collector commits:
    a read through the driver runs in the connection's transaction, begun as SQLAlchemy
    begins it."""
    reader = reader_engine(db_path)
    read = statements.Prepared(select(schema.meta.c.value).where(schema.meta.c.key == "probe"))
    with engine.begin() as conn:
        meta.put(conn, "probe", "before")
    with reader.connect() as conn:
        assert read(conn).scalar() == "before"
        with engine.begin() as writer:  # the collector commits during the request
            meta.put(writer, "probe", "after")
        assert read(conn).scalar() == "before"
        conn.commit()
        assert read(conn).scalar() == "after"
    reader.dispose()


@pytest.mark.sqlite_only
def test_a_prepared_read_that_fails_raises_what_sqlalchemy_raises(tmp_path):
    """What the API's handlers catch (``DBAPIError``, the driver's error as ``orig``): a 503
    with SQLite's reason, as when the reads went through SQLAlchemy's execution."""
    path = tmp_path / "no-schema.db"
    sqlite3.connect(path).close()
    reader = reader_engine(str(path))
    with reader.connect() as conn, pytest.raises(OperationalError, match="no such table") as e:
        meta.read_status(conn)
    assert isinstance(e.value.orig, sqlite3.OperationalError)
    assert "SELECT" in e.value.statement
    reader.dispose()


def _months(conn) -> list[tuple]:
    return sorted(tuple(r) for r in conn.execute(select(schema.stats_monthly)).all())


def test_the_months_are_the_sums_of_the_days_whatever_writes_them(engine):
    """``stats_monthly`` follows ``stats_daily`` through the database's triggers: days added,
    added to (the rollup's upsert, a late poll), changed and deleted (prune, backfill), across
    month and year ends and a leap day; a month whose last day goes is deleted."""
    insert_client(engine, "alice", id=1)
    insert_client(engine, "bob", id=2)
    d = schema.stats_daily
    days = [  # 2027-12-30 .. 2028-03-02: a year end, and February 2028 has 29 days
        1_830_124_800 + n * 86400 for n in range(64)
    ]
    with engine.begin() as conn:
        conn.execute(
            insert(d),
            [
                dict(client_id=cid, bucket=day, bytes_received=n * cid, bytes_sent=7 * n, samples=9)
                for cid in (1, 2)
                for n, day in enumerate(days)
            ],
        )
        assert _months(conn) == _months_of_days(conn)
        assert len(_months(conn)) == 2 * 4  # Dec, Jan, Feb, Mar, for each client
        # the rollup's and a late poll's upsert: added to a day that exists, and a new one
        statements.upsert(
            conn,
            d,
            [
                dict(client_id=1, bucket=days[3], bytes_received=5, bytes_sent=6, samples=1),
                dict(
                    client_id=1,
                    bucket=days[3] - 86400 * 30,
                    bytes_received=1,
                    bytes_sent=2,
                    samples=1,
                ),
            ],
            ["client_id", "bucket"],
            merge={"bytes_received": "add", "bytes_sent": "add", "samples": "add"},
        )
        conn.execute(d.update().where(d.c.client_id == 2).values(bytes_sent=d.c.bytes_sent + 1))
        assert _months(conn) == _months_of_days(conn)
        # prune: every day before February; bob's March goes with its only days
        conn.execute(d.delete().where(d.c.bucket < days[33]))
        conn.execute(d.delete().where(d.c.client_id == 2, d.c.bucket >= days[62]))
        assert _months(conn) == _months_of_days(conn)
        assert {(cid, b) for cid, b, *_ in _months(conn)} == {
            (1, days[33]),
            (1, days[62]),
            (2, days[33]),
        }


def test_upgrade_to_8_sums_the_days_there_are_into_months(engine):
    """7 -> 8: ``stats_monthly`` is made from the days already stored, and kept from then on."""
    insert_client(engine, "alice", id=1)
    d = schema.stats_daily
    with engine.begin() as conn:  # a schema-7 database with a few months of days
        if _pg(engine):
            conn.exec_driver_sql("DROP FUNCTION stats_monthly_sums() CASCADE")
        else:
            for name in ("add", "change", "take"):
                conn.exec_driver_sql(f"DROP TRIGGER stats_monthly_{name}")
        conn.exec_driver_sql("DROP TABLE stats_monthly")
        meta.put(conn, meta.SCHEMA_VERSION, "7")
        conn.execute(
            insert(d),
            [
                dict(
                    client_id=1,
                    bucket=1_830_124_800 + n * 86400,
                    bytes_received=n,
                    bytes_sent=2 * n,
                    samples=1,
                )
                for n in range(100)
            ],
        )
    assert init_db(engine) == (7, schema.SCHEMA_VERSION)
    with engine.begin() as conn:
        # December 2027 to April 2028
        assert len(_months(conn)) == 5 and _months(conn) == _months_of_days(conn)
        conn.execute(d.delete().where(d.c.bucket < 1_830_124_800 + 50 * 86400))
        assert _months(conn) == _months_of_days(conn)
    assert init_db(engine) == (schema.SCHEMA_VERSION, schema.SCHEMA_VERSION)


def _pg(engine) -> bool:
    return engine.dialect.name == "postgresql"
