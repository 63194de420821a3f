"""PostgreSQL as the storage engine: what is its own (the rest of the storage tests run on both
engines through the ``db_path`` fixture). A real server: Debian's, in a temporary cluster.

Commits reach readers as notifications; the API is read-only and answers 503 while the server is
away, recovering by itself; the collector loses nothing through an outage of the server; one
writer at a time; passwords never shown."""

from __future__ import annotations

import json

import falcon.testing
import pytest
from click.testing import CliRunner
from conftest import StatusPoller, require_e2e, row
from sqlalchemy import insert
from sqlalchemy.exc import DBAPIError
from test_cli import alice_status_file, write_config

from ovpnmon_api.app import create_app
from ovpnmon_collector.cli import cli
from ovpnmon_collector.lock import PostgresLock, WriterBusy
from ovpnmon_common import meta, schema
from ovpnmon_common.config import ApiConfig, Config, default_host
from ovpnmon_common.storage import engines, migrations, postgres
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import render_status

T0 = 1_795_717_500


@pytest.fixture
def url(postgres_cluster):
    database = postgres_cluster.database()
    yield database
    postgres_cluster.drop(database)


@pytest.fixture
def own_cluster():
    """A cluster of this test's own, to stop and start (the session's serves the others)."""
    import pg_harness

    require_e2e(pg_harness.unavailable())
    cluster = pg_harness.Cluster()
    yield cluster
    cluster.stop()


def totals(database):
    reader = engines.reader_engine(database)
    try:
        with reader.connect() as conn:
            return lifetime_totals(conn)
    finally:
        reader.dispose()


def test_a_commit_moves_the_readers_counter_and_a_read_does_not(url, postgres_cluster):
    writer = engines.writer_engine(url)
    migrations.init_db(writer)
    counter = engines.change_counter(url)
    first = counter.value()
    assert counter.value() == first
    reader = engines.reader_engine(url)
    with reader.connect() as conn:
        meta.read_status(conn)
    assert counter.value() == first  # reading changes nothing
    with writer.begin() as conn:
        meta.put(conn, "k", "1")
    assert counter.value() != first
    second = counter.value()
    with writer.begin() as conn:  # rolled back: nothing was committed
        meta.put(conn, "k", "2")
        conn.rollback()
    assert counter.value() == second
    # the listening connection lost (a server restart, a network cut): whatever was committed
    # meanwhile is unknown, so the value moves
    postgres_cluster.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'ovpnmon change counter'"
    )
    assert counter.value() != second
    counter.close()
    reader.dispose()
    writer.dispose()


def test_the_api_opens_read_only_transactions(url):
    migrations.init_db(engines.writer_engine(url))
    reader = engines.reader_engine(url)
    with reader.connect() as conn:
        assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "repeatable read"
        with pytest.raises(DBAPIError, match="read-only transaction"):
            conn.execute(insert(schema.meta).values(key="x", value="y"))
    reader.dispose()


def test_the_api_keeps_its_statements_prepared_across_requests(url, tmp_path):
    """psycopg prepares a statement on the server once it has run five times, and forgets
    every one at a ROLLBACK. The API's read transactions end with COMMIT, so a request's
    statements are planned once per connection, not on every request."""
    writer, poller = polled(url, tmp_path)
    poller.poll(row("alice", 0, T0 - 5, 0, 0))
    poller.poll(row("alice", 0, T0 - 5, 6000, 600))
    engine = engines.reader_engine(url, pool_size=1)
    config = Config(database=url, api=ApiConfig(cache_mb=0))  # every request reads
    client = falcon.testing.TestClient(create_app(config, engine, clock=lambda: T0 + 30.0))
    for _ in range(6):
        assert client.simulate_get("/api/v1/stats/alice").status_code == 200
    with engine.connect() as conn:  # the pool's one connection, which served them
        prepared = conn.exec_driver_sql("SELECT count(*) FROM pg_prepared_statements").scalar()
    assert prepared == 4  # the status, the client, its open sessions and counters, its series
    poller.close()
    writer.dispose()
    engine.dispose()


def polled(url, tmp_path):
    """A writer on ``url`` with its schema, and the real collector polling a status file."""
    writer = engines.writer_engine(url)
    migrations.init_db(writer)
    return writer, StatusPoller(writer, tmp_path, T0)


def test_the_api_answers_503_while_the_server_is_down_and_recovers(own_cluster, tmp_path):
    url = own_cluster.database().replace("postgres@", "postgres:s3cret@")  # trust: ignored
    writer, poller = polled(url, tmp_path)
    poller.poll(row("alice", 0, T0 - 5, 0, 0))
    poller.poll(row("alice", 0, T0 - 5, 6000, 600))
    client = falcon.testing.TestClient(create_app(Config(database=url), clock=lambda: T0 + 30.0))
    before = client.simulate_get("/api/v1/stats/alice")
    assert before.status_code == 200, before.text
    writer.dispose()
    own_cluster.halt()
    for path in ("/api/v1/stats/alice", "/api/v1/clients", "/api/v1/health"):
        down = client.simulate_get(path)
        assert down.status_code == 503, (path, down.text)
        assert down.json["success"] is False
        assert "s3cret" not in down.text
    health = client.simulate_get("/api/v1/health").json
    assert health["status"] == "unhealthy" and "127.0.0.1" in health["error"]
    own_cluster.start()
    after = client.simulate_get("/api/v1/stats/alice")
    assert after.status_code == 200, after.text
    assert after.json == before.json  # the same answer, by itself
    poller.close()


def test_the_api_reads_on_when_the_server_drops_its_pooled_connections(
    url, postgres_cluster, tmp_path
):
    """The API's pool pings no connection before a request (a round trip each): a connection
    the server dropped while pooled fails its first statement, and the request is read again
    on a new one. Nothing is answered 503 and the answer is the same."""
    writer, poller = polled(url, tmp_path)
    poller.poll(row("alice", 0, T0 - 5, 0, 0))
    poller.poll(row("alice", 0, T0 - 5, 6000, 600))
    config = Config(database=url, api=ApiConfig(cache_mb=0))  # every request reads
    client = falcon.testing.TestClient(create_app(config, clock=lambda: T0 + 30.0))
    before = client.simulate_get("/api/v1/stats/alice")
    assert before.status_code == 200, before.text
    database = url.rsplit("/", 1)[1]
    postgres_cluster.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND pid <> pg_backend_pid() "
        "AND application_name <> 'ovpnmon change counter'"
    )
    for path in ("/api/v1/stats/alice", "/api/v1/clients", "/metrics"):
        again = client.simulate_get(path)
        assert again.status_code == 200, (path, again.text)
    assert client.simulate_get("/api/v1/stats/alice").json == before.json
    poller.close()
    writer.dispose()


def test_the_collector_loses_nothing_while_the_server_is_down(own_cluster, tmp_path):
    url = own_cluster.database()
    writer, poller = polled(url, tmp_path)
    poller.poll(row("alice", 0, T0 + 1, 100, 10))
    own_cluster.halt()
    # by hand: StatusPoller.poll asserts that the poll was stored
    poller.status.write_text(render_status([row("alice", 0, T0 + 1, 300, 30)], T0 + 10))
    summary = poller.collector.poll()
    assert not summary.stored
    assert summary.error.startswith("database write failed, will retry next poll: ")
    assert "127.0.0.1" in summary.error
    own_cluster.start()
    poller.clock.advance(10)
    poller.poll(row("alice", 0, T0 + 1, 350, 35))
    assert totals(url) == {"alice": (350, 35, True)}  # the bytes of the failed poll arrive now
    poller.close()
    writer.dispose()


def test_a_server_stopped_for_1000_seconds_loses_nothing(own_cluster, tmp_path):
    """Issue 18's outage: PostgreSQL stopped for 100 polls (1,000 s), sessions opening and
    closing meanwhile, the collector restarted halfway; when the server is back the spooled
    polls are written in order and the history is the one a run without an outage stores."""
    from test_spool import history, run

    reference = own_cluster.database()
    run(reference, tmp_path / "reference", 130)
    url = own_cluster.database()
    spool = run(
        url,
        tmp_path,
        130,
        outage=range(10, 110),
        restart_at=60,
        down=own_cluster.halt,
        up=own_cluster.start,
    )
    assert len(spool) == 0
    assert history(url) == history(reference)


def test_the_cli_on_postgresql(url, tmp_path):
    runner = CliRunner()
    status = alice_status_file(tmp_path)
    secret = url.replace("postgres@", "postgres:s3cret@")  # trust auth ignores the password
    config = write_config(
        tmp_path, f"[database]\nurl = {secret}\n[source:udp]\nstatus_file = {status}\n"
    )
    result = runner.invoke(cli, ["init-db", "--config", config])
    assert result.exit_code == 0, result.output
    assert "created schema version" in result.output and "s3cret" not in result.output
    result = runner.invoke(cli, ["poll-once", "--config", config])
    assert result.exit_code == 0, result.output
    assert "1 of 1 sources read, 1 active clients, 1 sessions" in result.output
    result = runner.invoke(cli, ["info", "--json", "--config", config])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["tables"]["clients"]["rows"] == 1 and facts["database"]["size_bytes"] > 0
    assert "s3cret" not in result.output and "***" in facts["database"]["path"]
    result = runner.invoke(cli, ["backup", str(tmp_path / "b.db"), "--db", secret])
    assert result.exit_code == 1
    assert "is PostgreSQL: use pg_dump / pg_restore" in result.stderr
    assert "s3cret" not in result.stderr

    # one writer at a time: another collector holds the lock
    holder = PostgresLock(url, "run", default_host())  # the host the CLI's config names
    holder.acquire()
    try:
        result = runner.invoke(cli, ["poll-once", "--config", config])
        assert result.exit_code == 1
        assert "holds the writer lock" in result.stderr
        assert "ovpnmon-collector run pid" in result.stderr  # who it is
    finally:
        holder.release()
    result = runner.invoke(cli, ["poll-once", "--config", config])
    assert result.exit_code == 0, result.output


def test_an_unreachable_server_is_one_line(tmp_path):
    from conftest import free_port

    runner = CliRunner()
    gone = f"postgresql://ovpnmon:pw@127.0.0.1:{free_port()}/ovpnmon"
    result = runner.invoke(cli, ["init-db", "--db", gone])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "127.0.0.1" in lines[0] and "pw" not in lines[0], lines


def test_the_writer_lock_is_taken_again_after_the_server_restarts(own_cluster):
    url = own_cluster.database()
    lock = PostgresLock(url, "run", "vpn1")
    lock.acquire()
    own_cluster.halt()
    lock.ensure()  # unreachable: nobody writes through it; taken again next time
    own_cluster.start()
    lock.ensure()
    other = PostgresLock(url, "poll-once", "vpn1")
    with pytest.raises(WriterBusy, match="holds the writer lock of host vpn1"):
        other.acquire()
    lock.release()
    other.acquire()
    other.release()


def test_each_host_has_its_own_writer_lock(url):
    """Collectors of several hosts write one database at once; two of one host may not."""
    one, two = PostgresLock(url, "run", "vpn1"), PostgresLock(url, "run", "vpn2")
    one.acquire()
    two.acquire()
    try:
        with pytest.raises(WriterBusy, match=r"host vpn2 in .*: two collectors of one host"):
            PostgresLock(url, "poll-once", "vpn2").acquire()
    finally:
        one.release()
        two.release()


def test_the_lock_key_is_stable():
    # a new version of ovpnmon must find the lock an older one holds
    assert postgres.lock_key("collector") == 3963223351
    assert postgres.lock_key("collector vpn1") == 161136905


def test_the_roles_of_the_deploy_guide(own_cluster, tmp_path):
    """deploy/postgresql/*.sql as docs/postgresql.md runs them: the collector creates and
    writes, the API reads and can write nothing, through its engine or not."""
    import subprocess
    from pathlib import Path

    import psycopg

    here = Path(__file__).resolve().parents[1] / "deploy" / "postgresql"
    for database, name in (("postgres", "ovpnmon-roles.sql"), ("ovpnmon", "ovpnmon-grants.sql")):
        subprocess.run(
            [
                *("psql", "-h", "127.0.0.1", "-p", str(own_cluster.port), "-U", "postgres"),
                *("-v", "ON_ERROR_STOP=1", "-q", "-d", database, "-f", str(here / name)),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
    server = f"127.0.0.1:{own_cluster.port}/ovpnmon"
    collector, api = (
        f"postgresql://{role}@{server}" for role in ("ovpnmon_collector", "ovpnmon_api")
    )
    runner = CliRunner()
    status = alice_status_file(tmp_path)
    config = write_config(tmp_path, f"[source:udp]\nstatus_file = {status}\n")
    for command in ("init-db", "poll-once"):
        result = runner.invoke(cli, [command, "--config", config, "--db", collector])
        assert result.exit_code == 0, result.output

    client = falcon.testing.TestClient(
        create_app(Config(database=api.replace("://", "+psycopg://")))
    )
    listed = client.simulate_get("/api/v1/clients")
    assert listed.status_code == 200, listed.text
    assert [c["common_name"] for c in listed.json["data"]] == ["alice"]

    refused = runner.invoke(cli, ["poll-once", "--config", config, "--db", api])
    assert refused.exit_code == 1  # the collector's commands as the API's role
    assert "permission denied" in refused.stderr
    with psycopg.connect(
        f"host=127.0.0.1 port={own_cluster.port} user=ovpnmon_api dbname=ovpnmon"
    ) as conn:
        for sql in ("INSERT INTO meta VALUES ('x', 'y')", "CREATE TABLE t (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
            conn.rollback()


def test_the_metrics_warmer_outlives_a_failed_read(url, postgres_cluster):
    """A read failing inside the warmer (here: tables dropped behind every ovpnmon writer's
    back, which notifies no reader) ended its thread with a ProgrammingError."""
    from ovpnmon_api.database import FollowedDatabase
    from ovpnmon_api.metrics_state import MetricsState

    migrations.init_db(engines.writer_engine(url))
    state = MetricsState(FollowedDatabase(url))
    state.scrape(openmetrics=False)
    import psycopg

    dsn = url.replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE meta")
    state._version = None  # as after a commit: the next look reads again
    assert state.warm_once()  # said at debug level; the next scrape answers 503
