"""``copy-to``: a SQLite history into PostgreSQL, exactly (every row of every table, and the
API's answers byte for byte), re-runnable without duplicates, refused onto another history."""

from __future__ import annotations

import falcon.testing
import pytest
from click.testing import CliRunner
from conftest import StatusPoller, insert_client, row
from sqlalchemy import Engine, select

from ovpnmon_api.app import create_app
from ovpnmon_collector import prune, rollup
from ovpnmon_collector.cli import cli
from ovpnmon_collector.lock import WriterLock
from ovpnmon_common import schema
from ovpnmon_common.config import Config, RetentionConfig, default_host
from ovpnmon_common.storage import engines, migrations

T0 = 1_795_717_500  # 2026-11-26 18:25 UTC
URLS = [
    "/api/v1/stats",
    "/api/v1/stats/alice?range=24h",
    "/api/v1/stats/bob?range=7d&resolution=hourly",
    "/api/v1/stats/system",
    "/api/v1/analytics?range=24h",
    "/api/v1/clients",
    "/api/v1/usage?period=2026-11",
    "/api/v1/sessions",
    "/api/v1/certificates",
]


@pytest.fixture
def url(postgres_cluster):
    database = postgres_cluster.database()
    yield database
    postgres_cluster.drop(database)


def history(path, tmp_path) -> tuple[StatusPoller, int]:
    """Two days of a few clients through the real collector: reconnects, a duplicate-cn pair,
    rollups, retention; and a certificate row."""
    engine = engines.writer_engine(path)
    migrations.init_db(engine)
    poller = StatusPoller(engine, tmp_path, T0 - 2 * 86400, step=600)
    for i in range(288):
        since = T0 - 2 * 86400 + (i // 50) * 30000  # alice reconnects every ~8 h
        rows = [row("alice", 100 + i // 50, since, 1000 * (i % 50 + 1), 77 * (i % 50 + 1))]
        if i % 3:
            rows.append(row("bob", 1, T0 - 2 * 86400 - 5, 5000 * i, 40 * i))
            rows.append(row("bob", 2, T0 - 2 * 86400 - 5, 10 * i, i))  # duplicate-cn
        poller.poll(*rows)
    now = int(poller.clock.wall)
    rollup.catch_up(engine, now)
    prune.prune(engine, RetentionConfig(raw_days=1), now)
    with engine.begin() as conn:
        conn.execute(
            schema.certificates.insert().values(
                host_id=1,
                path="/pki/issued/alice.crt",
                serial="0A",
                file="alice.crt",
                common_name="alice",
                not_before=T0 - 86400 * 30,
                not_after=T0 + 86400 * 300,
                issuer="CN=Test CA",
                revoked=False,
                scanned_at=now,
            )
        )
    return poller, now


def every_row(database) -> dict[str, list[tuple]]:
    reader = engines.reader_engine(database)
    try:
        with reader.connect() as conn:
            return {
                table.name: [
                    tuple(r)
                    for r in conn.execute(select(table).order_by(*table.primary_key.columns)).all()
                ]
                for table in schema.metadata.sorted_tables
            }
    finally:
        reader.dispose()


def bodies(database, now) -> dict[str, bytes]:
    client = falcon.testing.TestClient(
        create_app(Config(database=database), clock=lambda: float(now))
    )
    out = {}
    for url in URLS:
        path, _, query = url.partition("?")
        result = client.simulate_get(path, query_string=query)
        assert result.status_code == 200, (url, result.text)
        out[url] = result.content
    return out


def test_a_history_copied_into_postgresql_is_the_same_to_the_byte(tmp_path, url):
    source = str(tmp_path / "ovpnmon.db")
    poller, now = history(source, tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["copy-to", url, "--db", source])
    assert result.exit_code == 0, result.output
    assert "usage_history" in result.output and "DIFFERS" not in result.output
    rows = every_row(source)
    assert rows["usage_history"] and rows["stats_hourly"] and rows["sessions"]
    assert every_row(url) == rows
    assert bodies(url, now) == bodies(source, now)

    # again: nothing doubled; after another poll of the source, again: the new poll arrives
    assert runner.invoke(cli, ["copy-to", url, "--db", source]).exit_code == 0
    assert every_row(url) == rows
    poller.poll(row("alice", 105, T0 - 2 * 86400 + 5 * 30000, 999_999, 8888))
    assert runner.invoke(cli, ["copy-to", url, "--db", source]).exit_code == 0
    assert every_row(url) == every_row(source) != rows
    poller.close()

    # the collector that takes over there takes new ids past the copied ones (its sequences)
    copied = every_row(url)
    target = engines.writer_engine(url)
    with target.begin() as conn:
        for table in ("clients", "sessions"):
            highest = max(r[0] for r in copied[table])
            assert engines.next_ids(conn, table, 2)[0] > highest, table
    target.dispose()


def test_a_target_with_another_history_is_refused_and_left_alone(tmp_path, url):
    source = str(tmp_path / "ovpnmon.db")
    poller, _ = history(source, tmp_path)
    poller.close()
    other = engines.writer_engine(url)
    migrations.init_db(other)
    insert_client(other, "mallory", id=1)
    before = every_row(url)
    result = CliRunner().invoke(cli, ["copy-to", url, "--db", source])
    assert result.exit_code == 1
    assert (
        f"the target holds another history for host {default_host()!r}: its client 'mallory' "
        "is not in the source; copy under another --host" in result.stderr
    )
    assert every_row(url) == before
    other.dispose()


def test_copy_to_is_refused_while_a_collector_writes_the_source(tmp_path, url):
    source = str(tmp_path / "ovpnmon.db")
    poller, _ = history(source, tmp_path)
    poller.close()
    daemon = WriterLock(source, "run")
    daemon.acquire()
    try:
        result = CliRunner().invoke(cli, ["copy-to", url, "--db", source])
    finally:
        daemon.release()
    assert result.exit_code == 1
    assert "is writing" in result.stderr
    assert "stop it first (systemctl stop ovpnmon-collector): what it polls after" in result.stderr
    for bad, said in ((source, "the target is the database itself"), ("mysql://x/y", "mysql")):
        refused = CliRunner().invoke(cli, ["copy-to", bad, "--db", source])
        assert refused.exit_code == 2 and said in refused.stderr


def source_and_fleet(tmp_path, url, start, polls) -> tuple[str, int, Engine]:
    """The source's ``history`` (path, its last poll), and the fleet's database at ``url``
    where vpn2's collector polled alice and zoe ``polls`` times every 10 minutes from
    ``start``, then rolled up (its engine)."""
    source = str(tmp_path / "ovpnmon.db")
    poller, now = history(source, tmp_path)
    poller.close()
    target = engines.writer_engine(url)
    migrations.init_db(target)
    vpn2 = StatusPoller(target, tmp_path, start, step=600, host="vpn2")
    for i in range(polls):
        vpn2.poll(
            row("alice", 7, start - 86400, 300 * (i + 1), 3 * (i + 1)),
            row("zoe", 8, start - 86400, 20 * (i + 1), 2 * (i + 1)),
        )
    vpn2.close()
    rollup.catch_up(target, int(vpn2.clock.wall))
    return source, now, target


def test_a_history_copied_under_a_host_name_into_a_fleets_database(tmp_path, url):
    """The target is a fleet's: vpn2's collector has written two days there and rolled up
    further than the source. The source's history goes in as host vpn1, its rows under the
    target's ids: vpn1's answers are the source's, vpn2's are unchanged, the fleet sums both,
    and a second run changes nothing."""
    source, now, target = source_and_fleet(tmp_path, url, T0 - 2 * 86400, 300)
    target.dispose()  # vpn2 polled two hours past the source's end: its tiers are built further
    paths = [
        "/api/v1/stats",
        "/api/v1/stats/alice?range=24h",
        "/api/v1/stats/alice?range=7d&resolution=hourly",
        "/api/v1/stats/bob?range=24h",
        "/api/v1/analytics?range=24h",
        "/api/v1/clients",
    ]
    theirs = [p for p in paths if "bob" not in p]  # bob never connected to vpn2
    vpn2_before = answers(url, now, theirs, "vpn2")

    runner = CliRunner()
    result = runner.invoke(cli, ["copy-to", url, "--db", source, "--host", "vpn1"])
    assert result.exit_code == 0, result.output
    assert "DIFFERS" not in result.output
    assert answers(url, now, paths, "vpn1") == answers(source, now, paths)
    assert answers(url, now, theirs, "vpn2") == vpn2_before
    client = falcon.testing.TestClient(create_app(Config(database=url), clock=lambda: now))
    alice = client.simulate_get("/api/v1/stats/alice").json["data"]["totals"]
    one = client.simulate_get("/api/v1/stats/alice", params={"host": "vpn1"}).json["data"]
    two = client.simulate_get("/api/v1/stats/alice", params={"host": "vpn2"}).json["data"]
    assert alice["received_bytes"] == (
        one["totals"]["received_bytes"] + two["totals"]["received_bytes"]
    )
    hosts = client.simulate_get("/api/v1/hosts").json["data"]
    assert [h["host"] for h in hosts] == ["vpn1", "vpn2"]

    rows = every_row(url)
    assert runner.invoke(cli, ["copy-to", url, "--db", source, "--host", "vpn1"]).exit_code == 0
    assert every_row(url) == rows  # nothing doubled
    # the source's own name is another host there now: refused, it has no history of vpn1's
    other = runner.invoke(cli, ["copy-to", url, "--db", source, "--host", "vpn2"])
    assert other.exit_code == 1 and "another history for host 'vpn2'" in other.stderr


def answers(database, now, paths, host=None) -> dict[str, object]:
    """The API's answers (JSON) at ``now``, narrowed to ``host`` if given."""
    client = falcon.testing.TestClient(
        create_app(Config(database=database), clock=lambda: float(now))
    )
    out = {}
    for path in paths:
        base, _, query = path.partition("?")
        if host is not None:
            query = "&".join(x for x in (query, f"host={host}") if x)
        result = client.simulate_get(base, query_string=query)
        assert result.status_code == 200, (path, result.text)
        out[path] = result.json
    return out


def test_a_history_copied_into_a_fleets_database_rolled_up_less_far(tmp_path, url):
    """The mirror of the test above: vpn2's collector stopped four days before the source's
    last poll, so the target's tiers are final only up to then, while the source's are final
    up to its end and its raw samples older than a day are pruned. The copied hosts' final
    buckets stay final there (the target's other hosts' buckets in between are built from
    their own finer data), so vpn1's answers are the source's, months included, and stay so
    after the target's next rollup, which must not rebuild them from the pruned samples."""
    # vpn2 polls a day and an hour, four days before the source's end
    source, now, target = source_and_fleet(tmp_path, url, T0 - 5 * 86400, 150)
    paths = [
        "/api/v1/stats",
        "/api/v1/stats/alice?range=24h",
        "/api/v1/stats/alice?range=7d&resolution=hourly",
        "/api/v1/stats/alice?range=30d&resolution=daily",
        "/api/v1/analytics?range=7d",
        "/api/v1/usage?period=2026-11",
        "/api/v1/usage?from=2026-11-20&to=2026-11-26",
    ]
    vpn2_before = answers(url, now, paths, "vpn2")
    wanted = answers(source, now, paths)

    result = CliRunner().invoke(cli, ["copy-to", url, "--db", source, "--host", "vpn1"])
    assert result.exit_code == 0, result.output
    assert "DIFFERS" not in result.output
    assert answers(url, now, paths, "vpn1") == wanted
    assert answers(url, now, paths, "vpn2") == vpn2_before
    # the target's collector starts again and rolls up: nothing of vpn1's is rebuilt from
    # samples the source had pruned
    rollup.catch_up(target, now)
    target.dispose()
    assert answers(url, now, paths, "vpn1") == wanted
    assert answers(url, now, paths, "vpn2") == vpn2_before
