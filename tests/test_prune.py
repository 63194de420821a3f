"""Retention on a database the collector filled: what goes, what stays, and the space."""

import json

import falcon.testing
import pytest
from click.testing import CliRunner
from schema_v3 import as_schema_3
from sqlalchemy import func, inspect, select

from ovpnmon_collector import pack, prune, rollup
from ovpnmon_collector.cli import cli
from ovpnmon_common import meta, schema
from ovpnmon_common.buckets import DAY, align
from ovpnmon_common.config import ConfigError, RetentionConfig, load_config
from ovpnmon_common.formatting import format_timestamp
from ovpnmon_common.storage import engines, migrations
from ovpnmon_common.totals import lifetime_totals
from ovpnmon_demo.simulator import Simulation, populate

NOW = 1_795_651_200 + 7 * 3600 + 55
START = NOW - 12 * DAY
RETENTION = RetentionConfig(raw_days=3, hourly_days=5, six_hour_days=8, daily_days=0)


@pytest.fixture
def filled(tmp_path):
    path = str(tmp_path / "ovpnmon.db")
    engine = engines.writer_engine(path)
    migrations.init_db(engine)
    populate(engine, str(tmp_path / "s.log"), START, NOW, 1800, Simulation(clients=8, seed=5))
    yield engine, path
    engine.dispose()


def oldest(engine, table, column):
    with engine.connect() as conn:
        return conn.execute(select(func.min(table.c[column]))).scalar()


def sums(engine, table):
    with engine.connect() as conn:
        return {r.bucket: (r.bytes_received, r.bytes_sent) for r in conn.execute(select(table))}


def test_nothing_raw_goes_before_it_is_rolled_up(filled):
    engine, _ = filled
    report = prune.prune(engine, RETENTION, NOW)  # no rollup has run yet
    assert report.deleted["usage_history"] == 0 and report.cutoffs["usage_history"] is None
    assert oldest(engine, schema.usage_history, "ts") == START


def test_prune_applies_each_retention_in_whole_days(filled):
    engine, _ = filled
    rollup.catch_up(engine, NOW)
    pack.catch_up(engine)
    kept_daily = sums(engine, schema.stats_daily)
    raw = (schema.usage_history, schema.usage_packed)
    with engine.connect() as conn:
        before = [conn.execute(select(func.count()).select_from(t)).scalar() for t in raw]
    report = prune.prune(engine, RETENTION, NOW)
    assert report.complete
    assert oldest(engine, schema.usage_history, "ts") >= align(NOW - 3 * DAY, DAY)
    assert oldest(engine, schema.usage_packed, "bucket") == align(NOW - 3 * DAY, DAY)
    assert oldest(engine, schema.global_history, "ts") >= align(NOW - 3 * DAY, DAY)
    assert oldest(engine, schema.stats_hourly, "bucket") == align(NOW - 5 * DAY, DAY)
    assert oldest(engine, schema.global_15min, "bucket") == align(NOW - 5 * DAY, DAY)
    assert oldest(engine, schema.stats_6h, "bucket") == align(NOW - 8 * DAY, DAY)
    assert sums(engine, schema.stats_daily) == kept_daily  # daily_days = 0: forever
    with engine.connect() as conn:
        after = [conn.execute(select(func.count()).select_from(t)).scalar() for t in raw]
        assert conn.exec_driver_sql("PRAGMA freelist_count").scalar() == 0
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    # the raw samples of the final buckets are packed (test_packing.py): rows of both go
    assert report.deleted["usage_history"] == before[0] - after[0]
    assert report.deleted["usage_packed"] == before[1] - after[1] > 0
    assert report.pages_freed > 0
    again = prune.prune(engine, RETENTION, NOW)
    assert sum(again.deleted.values()) == 0


def test_prune_records_how_far_each_tier_is_deleted_also_when_nothing_was_left(filled):
    engine, _ = filled
    rollup.catch_up(engine, NOW)
    prune.prune(engine, RETENTION, NOW)
    with engine.connect() as conn:
        pruned = meta.read_status(conn).pruned
    day = align(NOW, DAY)
    assert pruned == {
        "raw": day - 3 * DAY,
        "quarter_hour": day - 3 * DAY,
        "hourly": day - 5 * DAY,
        "six_hour": day - 8 * DAY,
        "global_raw": day - 3 * DAY,
        "global_15min": day - 5 * DAY,
    }  # daily_days = 0: never pruned, no key
    # a day later with nothing older left than the new limits, the keys still move on
    prune.prune(engine, RETENTION, NOW + DAY)
    prune.prune(engine, RETENTION, NOW + DAY)
    with engine.connect() as conn:
        later = meta.read_status(conn).pruned
    assert later == {name: before + DAY for name, before in pruned.items()}


def as_schema_2_without_prune_keys(engine):
    """The database as ovpnmon before schema 3 left it: pruned, but with no prune keys."""
    as_schema_3(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM meta WHERE key LIKE 'prune.%'")
        conn.exec_driver_sql("DROP INDEX ix_sessions_connected_since")
        meta.put(conn, meta.SCHEMA_VERSION, "2")


def usage(path, **params):
    from ovpnmon_api.app import create_app
    from ovpnmon_common.config import Config

    app = create_app(Config(database=path, retention=RETENTION), clock=lambda: NOW)
    return falcon.testing.TestClient(app).simulate_get("/api/v1/usage", params=params).json


def test_a_database_pruned_before_schema_3_is_upgraded_with_what_its_tiers_still_hold(filled):
    engine, path = filled
    rollup.catch_up(engine, NOW)
    prune.prune(engine, RETENTION, NOW)
    period = {"from": format_timestamp(NOW - 7 * DAY, "UTC"), "to": format_timestamp(NOW, "UTC")}
    expected = usage(path, **period)
    assert expected["rounded"][0]["tier"] == "stats_6h"  # raw and hourly no longer hold "from"
    with engine.connect() as conn:
        recorded = meta.read_status(conn).pruned
    as_schema_2_without_prune_keys(engine)
    assert migrations.init_db(engine) == (2, schema.SCHEMA_VERSION)
    with engine.connect() as conn:
        upgraded = meta.read_status(conn).pruned
        assert "ix_sessions_connected_since" in {
            i["name"] for i in inspect(conn).get_indexes("sessions")
        }
    # bucket tiers: exactly where prune stopped; raw: its oldest sample, at most one poll later.
    # The coarsest tier of a family (global_15min here) shows no evidence; prune writes its key.
    buckets = ("quarter_hour", "hourly", "six_hour")
    assert {k: upgraded[k] for k in buckets} == {k: recorded[k] for k in buckets}
    assert "global_15min" in recorded and "global_15min" not in upgraded
    for name in ("raw", "global_raw"):
        assert recorded[name] <= upgraded[name] < recorded[name] + 1800
    assert usage(path, **period) == expected  # the same bytes, the same rounded edges


def test_a_schema_2_database_never_pruned_gets_no_prune_keys(filled):
    engine, _ = filled
    rollup.catch_up(engine, NOW)
    as_schema_2_without_prune_keys(engine)
    migrations.init_db(engine)
    with engine.connect() as conn:
        assert meta.read_status(conn).pruned == {}


def test_cli_prune_and_info(filled, tmp_path):
    engine, path = filled
    rollup.catch_up(engine, NOW)
    config = tmp_path / "c.conf"
    config.write_text(
        f"[database]\npath = {path}\n[retention]\nraw_days = 3\nhourly_days = 5\nsix_hour_days = 8\n"
    )
    engines.close_writer(engine)
    result = CliRunner().invoke(cli, ["prune", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "usage_history" in result.output and "pages returned to the file system" in result.output
    result = CliRunner().invoke(cli, ["info", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    facts = json.loads(result.output)
    assert facts["schema_version"] == schema.SCHEMA_VERSION
    assert facts["tables"]["usage_history"]["oldest"] >= align(NOW - 3 * DAY, DAY)
    assert facts["tables"]["clients"]["rows"] == 8
    assert facts["watermarks"]["hourly"] == align(NOW, 3600)
    # the bucket in progress summed up to NOW; the day up to a final quarter-hour (16 a run)
    day = facts["open"].pop("daily")
    assert facts["open"] == {"quarter_hour": NOW} and align(NOW, DAY) < day <= align(NOW, 900)
    assert facts["sources"]["sim"]["state"] == "ok"
    human = CliRunner().invoke(cli, ["info", "--config", str(config)])
    assert human.exit_code == 0
    assert "usage_history" in human.output and "rollups final up to (UTC):" in human.output
    assert f"the bucket in progress summed up to {format_timestamp(NOW)}" in human.output
    assert "sim          ok since" in human.output


def test_info_on_a_missing_database(tmp_path):
    result = CliRunner().invoke(cli, ["info", "--db", str(tmp_path / "none.db")])
    assert result.exit_code == 1
    assert "cannot read database" in result.stderr


def test_closed_sessions_go_after_sessions_days_open_ones_and_totals_stay(filled):
    engine, _ = filled
    s = schema.sessions
    with engine.connect() as conn:
        totals_before = lifetime_totals(conn)
        rows = conn.execute(select(s.c.id, s.c.connected_since, s.c.disconnected_at)).all()
    still_open = {r.id for r in rows if r.disconnected_at is None}
    # first at NOW (some closed sessions are older than 4 days, some newer), then much later:
    # every closed one is old then, and open ones that connected before the cutoff stay
    later = max(r.connected_since for r in rows if r.id in still_open) + 5 * DAY
    kept = {r.id for r in rows}
    for at in (NOW, later):
        limit = align(at - 4 * DAY, DAY)
        old = {r.id for r in rows if r.disconnected_at is not None and r.disconnected_at < limit}
        assert old and (at == later or old != kept - still_open)
        report = prune.prune(engine, RetentionConfig(raw_days=0, sessions_days=4), at)
        assert report.complete and report.cutoffs["sessions"] == limit
        assert report.deleted["sessions"] == len(old & kept)
        kept -= old
        with engine.connect() as conn:
            assert {r.id for r in conn.execute(select(s.c.id))} == kept
            assert lifetime_totals(conn) == totals_before  # the totals never needed those rows
    assert kept == still_open
    forever = prune.prune(engine, RetentionConfig(raw_days=0, sessions_days=0), later + 900 * DAY)
    assert forever.cutoffs["sessions"] is None and forever.deleted["sessions"] == 0


def test_sessions_days_is_read_from_the_config(tmp_path):
    path = tmp_path / "c.conf"
    path.write_text("[retention]\nsessions_days = 30\n")
    assert load_config(str(path)).retention.sessions_days == 30
    path.write_text("[retention]\nsessions_days = -1\n")
    with pytest.raises(ConfigError, match="sessions_days"):
        load_config(str(path))
