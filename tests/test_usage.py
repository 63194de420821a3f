"""``GET /usage``: every client's bytes over a calendar period, equal to the raw deltas inside
it — also after prune, where the answer says which edge moved to which tier bucket — with
quotas, CSV and the 400s that name the accepted forms."""

import csv
import datetime as dt
import io
import tempfile
from collections import defaultdict
from pathlib import Path

import falcon.testing
import pytest
from conftest import StatusPoller, row
from hypothesis import event, given, note, settings
from hypothesis import strategies as st
from sqlalchemy import select
from test_consistency import ONE_DATABASE_PER_EXAMPLE, replay, step

from ovpnmon_api.app import create_app
from ovpnmon_collector import prune, rollup
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.buckets import DAY, align_up
from ovpnmon_common.config import ApiConfig, Config, QuotaConfig, RetentionConfig
from ovpnmon_common.formatting import format_timestamp
from ovpnmon_common.periods import parse_period, parse_time
from ovpnmon_common.planner import InvalidQuery, plan_analytics, plan_usage
from ovpnmon_common.tiers import TIERS

# 2026-10-24 12:00 UTC: the histories cross Berlin's change back to CET (25 October) and the
# end of October in every zone below
START = 1_792_843_200
ZONES = ["UTC", "Europe/Berlin", "Asia/Kolkata", "America/Santiago"]
WIDTH = {tier.table.name: tier.width for tier in TIERS}


def get(app, path, **params):
    client = falcon.testing.TestClient(app)
    return client.simulate_get(path, params=params or None)


def raw_samples(engine):
    """(common name, ts) -> (rx, tx) of every raw sample: the truth, read before prune."""
    c = schema.clients
    with engine.connect() as conn:
        names = dict(conn.execute(select(c.c.id, c.c.common_name)).all())
        return {(names[cid], ts): (rx, tx) for cid, ts, rx, tx in packed.raw_samples(conn)}


def raw_sums(samples, start, end):
    sums = defaultdict(lambda: [0, 0])
    for (name, ts), (rx, tx) in samples.items():
        if start <= ts < end:
            sums[name][0] += rx
            sums[name][1] += tx
    return {name: tuple(v) for name, v in sums.items() if v != [0, 0]}


def from_csv(text):
    """The CSV body as JSON's data entries (numbers and nulls back as they were)."""
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    for entry in rows:
        for key, value in entry.items():
            if key == "common_name":
                entry[key] = value[1:] if value.startswith("'") else value
            elif value == "":
                entry[key] = None
            else:
                entry[key] = float(value) if "." in value else int(value)
    return rows


def period_params(data, tz, samples):
    times = sorted(ts for _, ts in samples) or [START]
    kind = data.draw(st.sampled_from(["month", "week", "day", "range"]))
    if kind == "range":
        start = data.draw(st.integers(times[0] - DAY, times[-1] + DAY))
        end = data.draw(st.integers(start + 1, times[-1] + 2 * DAY))
        return {
            "from": format_timestamp(start, "UTC").replace(" ", "T") + "Z",
            "to": format_timestamp(end, "UTC").replace(" ", "T") + "Z",
        }
    when = data.draw(st.sampled_from(times))
    local = format_timestamp(when, tz)
    if kind == "month":
        return {"period": local[:7]}
    if kind == "day":
        return {"period": local[:10]}
    year, week, _ = dt.date.fromisoformat(local[:10]).isocalendar()
    return {"period": f"{year}-W{week:02d}"}


retentions = st.builds(
    RetentionConfig,
    raw_days=st.integers(1, 3),
    hourly_days=st.sampled_from([0, 4, 6]),
    six_hour_days=st.sampled_from([0, 5, 8]),
    daily_days=st.sampled_from([0, 7, 9]),
)


@settings(max_examples=60, deadline=None, suppress_health_check=ONE_DATABASE_PER_EXAMPLE)
@given(
    st.lists(step, min_size=1, max_size=25),
    st.sampled_from(ZONES),
    retentions,
    st.one_of(st.none(), st.integers(0, 12 * DAY)),
    st.data(),
)
def test_usage_equals_the_raw_sums_or_states_its_rounded_edges(
    fresh_database, steps, tz, retention, later, data
):
    choose = lambda x: period_params(data, tz, x)  # noqa: E731
    with fresh_database() as database:
        check_usage(steps, tz, retention, later, choose, note, event, database)


def test_an_edge_in_pruned_raw_data_is_rounded_to_the_tier_and_summed_from_there():
    """Polls every 5 hours for three days; raw samples kept one day: Kolkata's 25 October starts
    at 18:30 UTC, which only the hourly tier still holds, rounded to 19:00."""
    steps = [(5 * 3600 + 1, [1000 * i, 7, "new" if i % 4 == 0 else 3], False) for i in range(15)]
    retention = RetentionConfig(raw_days=1, hourly_days=30, six_hour_days=60, daily_days=0)
    body = check_usage(steps, "Asia/Kolkata", retention, 0, lambda _: {"period": "2026-10-25"})
    assert body["exact"] is False
    assert body["rounded"] == [
        {
            "edge": "from",
            "asked": "2026-10-25 00:00:00",
            "used": "2026-10-25 00:30:00",
            "tier": "stats_hourly",
        },
        {
            "edge": "to",
            "asked": "2026-10-26 00:00:00",
            "used": "2026-10-26 00:30:00",
            "tier": "stats_hourly",
        },
    ]
    assert body["data"], "the day had traffic"


def check_usage(
    steps,
    tz,
    retention,
    later,
    choose,
    report=lambda text: None,
    tally=lambda _: None,
    database=None,
):
    """Replay ``steps`` through the collector into ``database`` (default: a file of its own),
    roll up, prune ``later`` seconds after the last poll (None: not at all), ask ``/usage`` for
    ``choose(raw samples)``'s parameters, and check the answer against the raw samples as they
    were before prune; the body."""
    with tempfile.TemporaryDirectory() as tmp:
        database = database or str(Path(tmp) / "x.db")
        engine, now = replay(Path(tmp), steps, start=START, database=database)
        samples = raw_samples(engine)
        if later is not None:
            now += later
            rollup.catch_up(engine, now)
            prune.prune(engine, retention, now)
        else:
            rollup.catch_up(engine, now)
        with engine.connect() as conn:
            pruned = meta.read_status(conn).pruned
        params = choose(samples)
        report(f"tz={tz} params={params} pruned={pruned}")
        config = Config(database=database, retention=retention, api=ApiConfig(timezone=tz))
        app = create_app(config, clock=lambda: now)
        result = get(app, "/api/v1/usage", **params)
        if "period" in params:
            period = parse_period(params["period"], tz)
            asked = period.start, period.end
        else:
            asked = parse_time(params["from"], tz, "from"), parse_time(params["to"], tz, "to")
        engine.dispose()
        rounded = result.status_code == 200 and result.json["rounded"]
        tally(f"status {result.status_code}" + (", edges rounded" if rounded else ""))
        if result.status_code == 400:
            assert "no longer held" in result.json["error"] or "inside one" in result.json["error"]
            with pytest.raises(InvalidQuery):
                plan_usage(*asked, pruned, str)
            return result.json
        assert result.status_code == 200, result.text
        body = result.json
        used = list(asked)
        for edge in body["rounded"]:
            i = 0 if edge["edge"] == "from" else 1
            used[i] = align_up(asked[i], WIDTH[edge["tier"]])
            assert edge["asked"] == format_timestamp(asked[i], tz)
            assert edge["used"] == format_timestamp(used[i], tz)
            assert asked[i] < pruned["raw"]  # rounded only where raw samples are gone
        assert body["exact"] == (not body["rounded"])
        got = {e["common_name"]: (e["bytes_received"], e["bytes_sent"]) for e in body["data"]}
        assert got == raw_sums(samples, *used)
        assert body["total"]["bytes_total"] == sum(rx + tx for rx, tx in got.values())
        # CSV parsed back equals JSON
        csv_result = get(app, "/api/v1/usage", **params, format="csv")
        assert from_csv(csv_result.text) == body["data"]
        return body


T0 = 1_795_717_500  # 2026-11-26 18:25 UTC


@pytest.fixture
def polled(engine, tmp_path):
    """alice, bob and a hostile name, polled twice by the real collector."""
    poll = (poller := StatusPoller(engine, tmp_path, T0)).poll
    poll(row("alice", 0, T0 - 5, 0, 0), row("bob", 1, T0 - 5, 0, 0), row("=1+2", 2, T0 - 5, 0, 0))
    poll(
        row("alice", 0, T0 - 5, 6000, 600),
        row("bob", 1, T0 - 5, 100, 10),
        row("=1+2", 2, T0 - 5, 40, 4),
    )
    poller.close()
    return engine


def test_a_month_with_quotas(polled, db_path):
    quota = QuotaConfig(monthly=10_000, overrides=(("bob", None), ("=1+2", 88)))
    app = create_app(Config(database=db_path, quota=quota), clock=lambda: T0 + 20)
    body = get(app, "/api/v1/usage", period="2026-11").json
    assert body["period"] == {
        "kind": "month",
        "name": "2026-11",
        "from": "2026-11-01 00:00:00",
        "to": "2026-12-01 00:00:00",
        "timezone": "UTC",
        "seconds": 30 * DAY,
        "in_progress": True,
    }
    assert body["exact"] is True and body["rounded"] == []
    assert body["data"] == [
        {
            "common_name": "=1+2",
            "bytes_received": 40,
            "bytes_sent": 4,
            "bytes_total": 44,
            "quota_bytes": 88,
            "quota_used_percent": 50.0,
        },
        {
            "common_name": "alice",
            "bytes_received": 6000,
            "bytes_sent": 600,
            "bytes_total": 6600,
            "quota_bytes": 10_000,
            "quota_used_percent": 66.0,
        },
        {
            "common_name": "bob",
            "bytes_received": 100,
            "bytes_sent": 10,
            "bytes_total": 110,
            "quota_bytes": None,
            "quota_used_percent": None,
        },
    ]
    assert body["total"] == {"bytes_received": 6140, "bytes_sent": 614, "bytes_total": 6754}
    # /stats/<cn> shows the current month's
    stats = get(app, "/api/v1/stats/alice").json["data"]
    assert stats["quota"] == {
        "period": "2026-11",
        "monthly_bytes": 10_000,
        "used_bytes": 6600,
        "used_percent": 66.0,
        "exact": True,
    }
    assert get(app, "/api/v1/stats/bob").json["data"]["quota"] is None
    # a week is no quota period
    week = get(app, "/api/v1/usage", period="2026-W48").json["data"]
    assert {e["quota_bytes"] for e in week} == {None}
    # one client; the next month has nothing
    one = get(app, "/api/v1/usage", period="2026-11-26", common_name="bob").json
    assert [e["common_name"] for e in one["data"]] == ["bob"]
    assert get(app, "/api/v1/usage", period="2026-12").json["data"] == []


def test_csv_is_rfc_4180_and_safe_against_formulas(polled, db_path):
    app = create_app(Config(database=db_path), clock=lambda: T0 + 20)
    for result in (
        get(app, "/api/v1/usage", period="2026-11", format="csv"),
        falcon.testing.TestClient(app).simulate_get(
            "/api/v1/usage", params={"period": "2026-11"}, headers={"Accept": "text/csv"}
        ),
    ):
        assert result.status_code == 200
        assert result.headers["content-type"] == "text/csv; charset=utf-8; header=present"
        assert result.headers["content-disposition"] == 'attachment; filename="usage-2026-11.csv"'
        assert result.text == (
            "common_name,bytes_received,bytes_sent,bytes_total,quota_bytes,quota_used_percent\r\n"
            "'=1+2,40,4,44,,\r\n"
            "alice,6000,600,6600,,\r\n"
            "bob,100,10,110,,\r\n"
        )
    # a browser's Accept header still gets JSON
    browser = falcon.testing.TestClient(app).simulate_get(
        "/api/v1/usage",
        params={"period": "2026-11"},
        headers={"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"},
    )
    assert browser.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "params, message",
    [
        (
            {},
            "give period (YYYY-MM (a month), YYYY-Www (an ISO week, Monday to Sunday) or "
            "YYYY-MM-DD (a day)) or from (and optionally to)",
        ),
        ({"period": "Nov"}, "period must be YYYY-MM (a month), YYYY-Www"),
        ({"period": "2026-11", "from": "2026-11-01"}, "give either period or from/to, not both"),
        ({"from": "2026-11-05", "to": "2026-11-01"}, "from (2026-11-05) must be before to"),
        ({"from": "soon"}, "from must be YYYY-MM-DD (that day's midnight)"),
        ({"period": "2026-11", "format": "xml"}, "format must be json or csv; got 'xml'"),
        ({"period": "2026-11", "common_name": "nobody"}, "no client named 'nobody'"),
        ({"period": "2026-11", "range": "30d"}, "unknown query parameter 'range'"),
    ],
)
def test_bad_usage_questions_are_400s_that_name_the_accepted_forms(
    polled, db_path, params, message
):
    app = create_app(Config(database=db_path), clock=lambda: T0 + 20)
    result = get(app, "/api/v1/usage", **params)
    assert result.status_code == (404 if "nobody" in message else 400)
    assert result.json["success"] is False
    assert message in result.json["error"]


def test_usage_before_everything_kept_is_a_400_saying_since_when(polled, db_path, engine):
    retention = RetentionConfig(raw_days=1, hourly_days=2, six_hour_days=3, daily_days=4)
    later = T0 + 30 * DAY
    rollup.catch_up(engine, later)
    prune.prune(engine, retention, later)
    app = create_app(Config(database=db_path, retention=retention), clock=lambda: later)
    result = get(app, "/api/v1/usage", period="2026-11")
    assert result.status_code == 400
    assert result.json["error"] == (
        "traffic before 2026-12-22 00:00:00 is no longer held by any tier ([retention] "
        "daily_days); the period starts 2026-11-01 00:00:00: ask for a later period"
    )


def test_a_period_that_ends_is_no_longer_in_progress_before_the_next_commit(polled, db_path):
    """A cached body said ``in_progress: true`` until the next commit after the period ended."""
    now = [T0 + 20.0]
    app = create_app(Config(database=db_path), clock=lambda: now[0])
    assert get(app, "/api/v1/usage", period="2026-11-26").json["period"]["in_progress"] is True
    now[0] = T0 + 6 * 3600  # 2026-11-27 00:25: the day is over; nothing was committed since
    body = get(app, "/api/v1/usage", period="2026-11-26").json
    assert body["period"]["in_progress"] is False
    assert body["total"]["bytes_total"] == 6754  # the same bytes


def test_coarse_rows_less_what_is_outside_equal_the_raw_samples(db_path, tmp_path):
    """Polls every 11 hours from 24 October 2026 into January 2027 (rollups now and then). A
    month in UTC, whole or in progress, is its one row per client in stats_monthly; most of a
    month (a month of another zone, a 30-day range) is its row less the days left out; a few
    days are days; the 24 hours' start is a 6-hour bucket less what is before it. Every answer
    equals the raw samples, /analytics' top tens too. A month row changed behind the triggers'
    back, and a 6-hour row changed by hand, show in exactly the answers that read them."""
    steps = [
        (
            11 * 3600,
            [1000 * i + 7, None if i % 9 == 4 else 5 * i, "new" if i % 7 == 0 else 3],
            i % 5 == 0,
        )
        for i in range(160)
    ]
    engine, now = replay(tmp_path, steps, start=START, database=db_path)
    rollup.catch_up(engine, now)
    samples = raw_samples(engine)
    assert format_timestamp(now, "UTC")[:10] == "2027-01-05"

    def app(tz="UTC"):
        config = Config(database=db_path, api=ApiConfig(timezone=tz))
        return create_app(config, clock=lambda: float(now))

    def usage(tz="UTC", **params):
        result = get(app(tz), "/api/v1/usage", **params)
        assert result.status_code == 200, result.text
        assert result.json["exact"]
        return {
            e["common_name"]: (e["bytes_received"], e["bytes_sent"]) for e in result.json["data"]
        }

    def top_ten(range_name="30d"):
        result = get(app(), "/api/v1/analytics", range=range_name)
        assert result.status_code == 200, result.text
        top = result.json["data"]["top_clients_24h"]
        return {e["common_name"]: (e["total_rx"], e["total_tx"]) for e in top}

    def truth(tz="UTC", **params):
        if "period" in params:
            asked = parse_period(params["period"], tz)
            return raw_sums(samples, asked.start, asked.end)
        return raw_sums(
            samples, parse_time(params["from"], tz, "from"), parse_time(params["to"], tz, "to")
        )

    # (zone, parameters, how many of November's and December's rows the answer reads)
    asked = [
        ("UTC", {"period": "2026-11"}, 1),  # a whole month
        ("UTC", {"period": "2026-12"}, 1),
        ("UTC", {"period": "2027-01"}, 0),  # in progress: its days up to the daily watermark
        ("UTC", {"from": "2026-11-03", "to": "2026-12-02"}, 1),  # November less two days
        ("UTC", {"from": "2026-10-28", "to": "2026-12-30"}, 2),  # and December less two
        ("UTC", {"from": "2026-11-10", "to": "2026-11-13"}, 0),  # three days
        ("UTC", {"period": "2026-W49"}, 0),
        # 30 November 23:00 UTC to 31 December 23:00: hours, December less its last day, hours
        ("Europe/Berlin", {"period": "2026-12"}, 1),
    ]
    for tz, params, _ in asked:
        assert usage(tz, **params) == truth(tz, **params), (tz, params)
    thirty = plan_analytics("30d", now, RetentionConfig())
    assert top_ten() == raw_sums(samples, thirty.start, thirty.end)
    assert format_timestamp(thirty.start, "UTC")[:7] == "2026-12"  # most of December, less days
    day = plan_analytics("24h", now, RetentionConfig())
    assert top_ten("24h") == raw_sums(samples, day.start, day.end)

    m = schema.stats_monthly
    with engine.begin() as conn:
        (cid,) = conn.execute(
            select(schema.clients.c.id).where(schema.clients.c.common_name == "c0")
        ).one()
        conn.execute(
            m.update()
            .where(m.c.client_id == cid, m.c.bucket.in_([1_793_491_200, 1_796_083_200]))
            .values(bytes_received=m.c.bytes_received + 1000)
        )  # November and December 2026
    engine.dispose()
    for tz, params, months in asked:
        rx, tx = truth(tz, **params)["c0"]
        assert usage(tz, **params)["c0"] == (rx + 1000 * months, tx), (tz, params)
    rx, tx = raw_sums(samples, thirty.start, thirty.end)["c0"]
    assert top_ten()["c0"] == (rx + 1000, tx)  # December's row, less the days before the range

    # From 20:15 the 24 hours start with the 6-hour bucket from 18:00 less two hours and a
    # quarter (four rows per client), not three quarters and three hours (six).
    assert format_timestamp(day.start, "UTC") == "2027-01-04 20:15:00"
    six = schema.stats_6h
    with engine.begin() as conn:
        conn.execute(
            six.update()
            .where(six.c.client_id == cid, six.c.bucket == day.start - 2 * 3600 - 15 * 60)
            .values(bytes_received=six.c.bytes_received + 1000)
        )
    engine.dispose()
    rx, tx = raw_sums(samples, day.start, day.end)["c0"]
    assert top_ten("24h")["c0"] == (rx + 1000, tx)


def test_the_7_day_top_ten_starts_at_the_first_hour_that_pruned_tiers_still_hold(tmp_path):
    """With the default retention the 15-minute tier keeps 3 days (``raw_days``). The 7 days of
    /analytics start on a 105-minute edge, often inside an hour, which only the 15-minute tier
    held: the top ten then counts from the next whole hour (docs/api.md), and says the same
    with or without reading coarse rows less finer ones."""
    steps = [
        (600, [100 * i + 7, 3 * i, "new" if i % 50 == 0 else 11], i % 144 == 0) for i in range(1240)
    ]
    engine, now = replay(tmp_path, steps, start=START)
    rollup.catch_up(engine, now)
    samples = raw_samples(engine)
    prune.prune(engine, RetentionConfig(), now)
    with engine.connect() as conn:
        assert meta.read_status(conn).pruned["quarter_hour"] > now - 4 * DAY
    engine.dispose()
    week = plan_analytics("7d", now, RetentionConfig())
    assert week.start % 3600 != 0
    app = create_app(Config(database=str(tmp_path / "x.db")), clock=lambda: float(now))
    top = get(app, "/api/v1/analytics", range="7d").json["data"]["top_clients_24h"]
    got = {e["common_name"]: (e["total_rx"], e["total_tx"]) for e in top}
    assert got == raw_sums(samples, align_up(week.start, 3600), week.end)
    assert got != raw_sums(samples, week.start, week.end)
