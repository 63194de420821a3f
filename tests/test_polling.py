"""How the benchmarks load big databases (``ovpnmon_demo.polling``): the collector polling in a
child process stores exactly what it stores polling here, and a failure on either side is an
error with its reason, never a hang or a database short of polls without a word."""

from __future__ import annotations

import hashlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import select

from ovpnmon_collector import rollup
from ovpnmon_collector.prune import prune
from ovpnmon_common import meta, packed, schema
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.storage import engines, migrations
from ovpnmon_demo.polling import closing_buckets, poll_in_child
from ovpnmon_demo.simulator import Simulation, render_status
from ovpnmon_demo.world import BUCKET, Dataset, feed

START = 1_795_717_500 // 86400 * 86400 + 5 * 3600
# what a poll leaves in every table of traffic, in key order (not the collector's timings)
TABLES = {
    schema.stats_15min: ("client_id", "bucket"),
    schema.stats_hourly: ("client_id", "bucket"),
    schema.global_history: ("ts",),
    schema.global_15min: ("bucket",),
    schema.sessions: ("id",),
    schema.clients: ("id",),
}


@pytest.fixture
def no_hang():
    """A load that hangs fails the test after a minute instead (SIGALRM interrupts a wait)."""

    def hung(_signum, _frame):
        raise TimeoutError("poll_in_child still waiting after 60 s")

    before = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, before)


def new_database(path):
    engine = engines.writer_engine(str(path))
    migrations.init_db(engine)
    return engine


def content(path):
    engine = engines.writer_engine(str(path))
    with engine.connect() as conn:
        found = {"raw": packed.raw_samples(conn)}
        for table, key in TABLES.items():
            columns = [c for c in table.c if c.name not in ("interval",)]
            found[table.name] = conn.execute(
                select(*columns).order_by(*(table.c[k] for k in key))
            ).all()
    engines.close_writer(engine)
    return found


def test_polling_in_a_child_stores_what_polling_here_stores(tmp_path):
    def world():
        day = START // 86400 * 86400
        dataset = Dataset(clients=30, start=day, end=day + 6 * 3600, interval=60, seed=35)
        assert dataset.restarts and dataset.gaps  # sessions renumbered, a time without polls
        return dataset

    here = tmp_path / "here.db"
    engine, after = new_database(here), closing_buckets()
    feed(world(), engine, str(tmp_path / "here.status"), lambda now, rows: after(engine, now))
    engines.close_writer(engine)

    there = tmp_path / "there.db"
    engines.close_writer(new_database(there))
    texts = ((now, render_status(rows, now)) for now, rows in world().polls())
    took = poll_in_child(str(there), str(tmp_path / "there.status"), 60, texts, closing_buckets())

    ours, theirs = content(here), content(there)
    assert len(ours["raw"]) > 5000 and len(ours["sessions"]) > 30 and ours["stats_hourly"]
    assert theirs == ours
    assert took["polls"] > 0 and took["after"] > 0 and took["waited"] >= 0


def test_pruning_as_the_polls_go_leaves_what_pruning_at_the_end_leaves(tmp_path):
    """``closing_buckets(retention=...)`` prunes once a day of the polls' time, as the daemon
    does every hour, so that a year's load writes into tables of the daemon's size rather than
    into every sample and session of the year. What it leaves after the last prune is what a
    load pruned only at the end leaves."""
    day = START // 86400 * 86400
    end = day + 6 * 86400
    retention = RetentionConfig(raw_days=2, sessions_days=1)

    def load(name, as_they_go):
        """(the oldest raw sample when the polls end, what is left after the last prune)"""
        path = tmp_path / f"{name}.db"
        engine, after = new_database(path), closing_buckets(retention=as_they_go)
        dataset = Dataset(clients=20, start=day, end=end, interval=1800, seed=7)
        feed(dataset, engine, str(tmp_path / f"{name}.status"), lambda t, _: after(engine, t))
        with engine.connect() as conn:
            oldest = min(s[1] for s in packed.raw_samples(conn))
        rollup.catch_up(engine, end)
        prune(engine, retention, end)
        engines.close_writer(engine)
        return oldest, content(path)

    loads = {"end": load("end", None), "going": load("going", retention)}
    assert loads["end"][0] == day, "kept until the end"
    assert loads["going"][0] >= end - 3 * 86400, "pruned as the polls went"
    assert loads["going"][1] == loads["end"][1]
    assert loads["end"][1]["raw"] and loads["end"][1]["sessions"]


def test_a_poll_that_fails_stops_the_load_with_the_collectors_reason(tmp_path, no_hang):
    path = tmp_path / "o.db"
    engines.close_writer(new_database(path))
    simulation = Simulation(clients=5)
    texts = [
        (START, render_status(simulation.step(START), START)),
        (START + 10, "TITLE\tOpenVPN\nthis is no status file\n"),
        (START + 20, render_status(simulation.step(START + 20), START + 20)),
    ]
    with pytest.raises(RuntimeError) as failed:
        poll_in_child(str(path), str(tmp_path / "s.log"), 10, iter(texts))
    message = str(failed.value)
    assert "the polling process failed" in message
    assert f"simulated poll at {START + 10} failed" in message
    assert "incomplete (being rewritten, or truncated)" in message  # the collector's reason
    # stored as the collector stores a poll whose source failed (no traffic, the failure on
    # record), and nothing after it
    assert [row.ts for row in content(path)["global_history"]] == [START, START + 10]


def test_a_polling_process_that_dies_is_an_error_not_a_hang(tmp_path, no_hang):
    path = tmp_path / "o.db"
    engines.close_writer(new_database(path))
    simulation = Simulation(clients=5)
    texts = (
        (now, render_status(simulation.step(now), now)) for now in range(START, START + 600, 10)
    )
    with pytest.raises(RuntimeError, match="the polling process died"):
        poll_in_child(
            str(path), str(tmp_path / "s.log"), 10, texts, lambda engine, now: os._exit(3)
        )


def test_a_simulation_that_fails_here_stops_the_child_too(tmp_path, no_hang):
    path = tmp_path / "o.db"
    engines.close_writer(new_database(path))
    simulation = Simulation(clients=5)

    def texts():
        yield START, render_status(simulation.step(START), START)
        raise ValueError("the world broke")

    with pytest.raises(ValueError, match="the world broke"):
        poll_in_child(str(path), str(tmp_path / "s.log"), 10, texts())
    assert [row.ts for row in content(path)["global_history"]] == [START]


def test_the_simulation_runs_ahead_while_the_child_is_busy(tmp_path, no_hang):
    """While the child rolls up and packs a closed bucket (seconds at 10,000 clients) the
    simulation goes on drawing texts, up to ``ahead`` of them, instead of waiting in a send of
    a text several times what the pipe holds. Here the child's first ``after`` waits until the
    simulation has drawn its last text: a simulation one poll ahead never does."""
    path = tmp_path / "o.db"
    engines.close_writer(new_database(path))
    simulation = Simulation(clients=4000)
    times = [START + 10 * i for i in range(8)]
    polls = [(now, render_status(simulation.step(now), now)) for now in times]
    assert sum(len(text) for _, text in polls) > 2_000_000  # the pipe holds a few hundred kB
    drawn = tmp_path / "all drawn"

    def texts():
        yield from polls
        drawn.touch()

    def after(engine, now):
        if now == START:
            for _ in range(300):
                if drawn.exists():
                    return
                time.sleep(0.1)
            raise RuntimeError("the simulation did not run ahead")

    poll_in_child(str(path), str(tmp_path / "s.log"), 10, texts(), after)
    assert [row.ts for row in content(path)["global_history"]] == times


def digest(polls):
    h = hashlib.sha256()
    for now, rows in polls:
        h.update(repr((now, [tuple(r) for r in rows])).encode())
    return h.hexdigest()


def test_the_benchmark_worlds_are_the_same_for_a_seed():
    """The benchmarks' figures are for a dataset: the same for a seed, whatever is done to make
    it faster. Digests of their rows taken before the loops were made faster (2026-12-04)."""
    dataset = Dataset(clients=200, start=START, end=START + 2 * 86400, interval=300, seed=19)
    assert dataset.restarts and len(dataset.gaps) == 2
    assert digest(dataset.polls()) == DATASET_DIGEST
    simulation = Simulation(clients=40, extra_names=("a b", "ü"))
    polls = [(now, simulation.step(now)) for now in range(START, START + 86400, 300)]
    assert digest(polls) == SIMULATION_DIGEST


DATASET_DIGEST = "d41b23726f75f98d9a0fecdf409904ab62eab8282c3a01c027f4dbfd5e6914b3"
SIMULATION_DIGEST = "848f894b730be6f8d97261506db728bfb30911de10c40c9556d8f1fc1b2a0440"


@pytest.mark.parametrize("world", [False, True], ids=["simulator", "world"])
def test_generate_leaves_the_database_the_daemon_would(tmp_path, world):
    """``bench/generate.py`` (a year of tiers, the last days polled at 10 s), small: history
    polled coarsely, then hourly, then at the interval; retention as the default keeps it; the
    final buckets' raw samples packed; no status file left."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "bench"))
    from generate import generate

    out, now = str(tmp_path / "g.db"), START + 7 * 3600 + 123
    timings = generate(out, 12, 0.1, 10, 40, 86400, 5, now=now, world=world)
    assert {"history_s", "hourly_s", "raw_s", "raw_polls_s", "raw_waited_s"} <= set(timings)
    assert not (tmp_path / "g.status").exists()
    engine = engines.writer_engine(out)
    with engine.connect() as conn:
        daily = conn.execute(select(schema.stats_daily.c.bucket).distinct()).scalars().all()
        assert min(daily) <= now - 39 * 86400  # the history's first days
        hourly = conn.execute(select(schema.stats_hourly.c.bucket).distinct()).scalars().all()
        # hourly detail for the last 5 days of history; kept 90 days, so the daily polls' too
        assert len([b for b in hourly if b >= now - 5 * 86400]) > 4 * 24
        samples = packed.raw_samples(conn)
        first_kept = (now - 3 * 86400) // 86400 * 86400  # retention: 3 days, whole UTC days
        assert samples and min(s[1] for s in samples) >= first_kept
        assert conn.execute(select(schema.usage_packed.c.bucket)).first() is not None
        status = meta.read_status(conn)
    engines.close_writer(engine)
    assert status.watermarks["quarter_hour"] == now // BUCKET * BUCKET
