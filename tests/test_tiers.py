"""The tier registry: one description of every table of traffic over time."""

from ovpnmon_collector import info, prune
from ovpnmon_collector.slices import spans
from ovpnmon_common import schema
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.planner import LABELS
from ovpnmon_common.tiers import (
    BY_NAME,
    MONTHLY,
    ROLLUPS,
    TIERS,
    built_on,
    in_progress,
    source_of,
)


def test_every_rollup_is_built_from_a_finer_tier_listed_before_it():
    for tier in ROLLUPS:
        src = source_of(tier)
        assert TIERS.index(src) < TIERS.index(tier)
        assert src.per_client == tier.per_client
        assert src.width is None or tier.width % src.width == 0


def test_every_traffic_table_of_the_schema_is_a_tier_once():
    tables = [tier.table.name for tier in TIERS]
    tables += [tier.packed.name for tier in TIERS if tier.packed is not None]
    tables.append(MONTHLY.table.name)  # kept by triggers beside the days, not a rollup
    # a tier's bucket in progress, where it has a table of its own: the tier's columns
    tables += [tier.open_table.name for tier in TIERS if tier.open_table is not None]
    for tier in TIERS:
        if tier.open_table is not None:
            assert list(tier.open_table.c.keys()) == list(tier.table.c.keys())
            assert in_progress(tier).table is tier.open_table
        else:
            assert in_progress(tier) is tier
            # rollup._close moves the bucket in progress of a tier summed from raw samples
            # out of its own table: every such tier has one
            assert not (tier.sums_open and tier.built_from and source_of(tier).raw), tier.name
    assert len(tables) == len(set(tables))
    traffic = {t.name for t in schema.metadata.sorted_tables if "bytes_received" in t.c}
    traffic -= {"sessions", "clients"}
    assert set(tables) == traffic
    for tier in TIERS:
        assert tier.time_column in tier.table.c
        assert hasattr(RetentionConfig(), tier.retention_key)


def test_retention_is_guarded_by_the_tier_built_on_each_table():
    assert built_on(BY_NAME["raw"]) is BY_NAME["quarter_hour"]
    assert built_on(BY_NAME["global_raw"]) is BY_NAME["global_15min"]
    assert built_on(BY_NAME["daily"]) is None
    marks = {"quarter_hour": 10 * 86400}
    # raw keeps what the 15-minute tier has not been built from, whatever retention says
    retention = RetentionConfig(raw_days=1)
    assert prune.cutoff(retention, BY_NAME["raw"], 100 * 86400, marks) == 10 * 86400
    assert prune.cutoff(retention, BY_NAME["global_raw"], 100 * 86400, marks) is None


def test_info_and_the_api_labels_come_from_the_registry():
    for tier in TIERS:
        assert info.TIME_COLUMNS[tier.table.name] == tier.time_column
    assert LABELS == (
        "usage_history",
        "usage_history_hires",
        "stats_hourly",
        "stats_6h",
        "stats_daily",
    )


def test_spans_cover_the_range_and_widen_while_quick():
    got = list(spans(0, 100, 10, 40, quick=60.0))  # every span "quick": doubles up to 40
    assert got == [(0, 10), (10, 30), (30, 70), (70, 100)]
    slow = list(spans(0, 30, 10, 40, quick=0.0))  # never quick: stays 10 wide
    assert slow == [(0, 10), (10, 20), (20, 30)]
    assert list(spans(5, 5, 10, 40, quick=1.0)) == []
