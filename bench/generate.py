"""Make a big, realistic ovpnmon database through the collector's own code paths.

N simulated clients with daily rhythms, connects and disconnects (and one duplicate-cn pair) write
real-format status text; the real collector parses, accounts and stores every poll, and rolls up
and packs as each 15-minute bucket closes; what the daemon's default retention keeps is kept,
pruned once a day of the polls' time (the daemon: every hour) and at the end. Older history is
polled coarsely (its tiers are what matters; ``--hourly-days``: its last days every hour), the
last days at the real interval. This process steps the simulation and renders its status text
while a child process polls (``ovpnmon_demo.polling.poll_in_child``): both cores at once.

    python bench/generate.py --clients 1000 --raw-days 3 --interval 10 --history-days 365 \\
        --out /tmp/ovpnmon-bench.db
    python bench/generate.py --world --clients 10000 --raw-days 3 --interval 10 \\
        --history-days 365 --history-interval 86400 --hourly-days 7 --out /tmp/bench-10k.db

``--world`` takes the clients of ``ovpnmon_demo.world`` (``vs_prometheus.py``'s: four classes,
sessions of hours, OpenVPN restarting and the collector down once a day) instead of the
simulator's (whose sessions last minutes: at 10 s polls, a churn no real server has).
``--first`` and ``--seed`` make another host's database: clients from ``user-<first>`` on, with
their own rhythms (``bench/api_postgres.py`` puts three such into one fleet database).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ovpnmon_demo: not installed

from ovpnmon_collector import pack, rollup
from ovpnmon_collector.prune import prune
from ovpnmon_common.buckets import DAY, HOUR
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.storage import engines, migrations
from ovpnmon_demo.polling import closing_buckets, poll_in_child
from ovpnmon_demo.simulator import Simulation, render_status
from ovpnmon_demo.world import Dataset

WHOLE_BUCKET = 1 << 30  # pack.catch_up's first slice: every client of a bucket in one go


def generate(
    out: str,
    clients: int,
    raw_days: float,
    interval: int,
    history_days: float = 0,
    history_interval: int = 3600,
    hourly_days: float = 0,
    now: int | None = None,
    first: int = 0,
    seed: int = 42,
    pack_samples: bool = True,
    world: bool = False,
) -> dict[str, float]:
    """Write the database; returns timings. ``now`` defaults to the current time. Retention
    keeps what the default ``[retention]`` keeps (raw samples 3 days, hourly 90, ...; pruned
    once a day of the polls' time as they go, as the daemon does every hour), and the
    raw samples of final buckets are packed, as the daemon leaves them, unless
    ``pack_samples`` is False (``rollup_day.py`` rolls up rows). ``world``: the clients of
    ``ovpnmon_demo.world`` (``vs_prometheus.py``'s) instead of ``ovpnmon_demo.simulator``'s."""
    now = now or int(time.time())
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(out + suffix):
            os.unlink(out + suffix)
    engine = engines.writer_engine(out)
    migrations.init_db(engine)
    engines.close_writer(engine)  # the polling process opens its own
    status = str(Path(out).with_suffix(".status"))
    texts = (
        _world(clients, seed, first)
        if world
        else _simulated(Simulation(clients, seed, first=first))
    )
    raw_start = now - int(raw_days * DAY)
    hourly_start = max(raw_start - int(hourly_days * DAY), now - int(history_days * DAY))
    phases = [
        ("history", now - int(history_days * DAY), hourly_start, history_interval),
        ("hourly", hourly_start, raw_start, HOUR),
        ("raw", raw_start, now, interval),
    ]
    timings = {}
    for name, start, end, step in phases:
        if start >= end:
            continue
        # this process steps the simulation and renders its status text, a child process polls
        # it, rolls up and packs: the two cores at once
        started = time.perf_counter()
        # history's raw samples go by retention: packed only where it keeps them (the last days)
        closing = closing_buckets(pack_samples and name == "raw", WHOLE_BUCKET, RetentionConfig())
        took = poll_in_child(out, status, step, texts(start, end, step), closing, "sim")
        timings[f"{name}_s"] = time.perf_counter() - started
        timings.update({f"{name}_{what}_s": seconds for what, seconds in took.items()})
    started = time.perf_counter()
    engine = engines.writer_engine(out)
    rollup.catch_up(engine, now)
    prune(engine, RetentionConfig(), now)  # as the daemon: what [retention] keeps by default
    if pack_samples:
        pack.catch_up(engine, width=WHOLE_BUCKET)
    engines.close_writer(engine)
    timings["last_rollup_s"] = time.perf_counter() - started
    os.unlink(status)
    return timings


Texts = Callable[[int, int, int], Iterator[tuple[int, str]]]  # (start, end, step) -> polls


def _simulated(simulation: Simulation) -> Texts:
    """Status texts of ``simulation``, one step a poll (its sessions carry on from phase to
    phase)."""

    def texts(start: int, end: int, step: int) -> Iterator[tuple[int, str]]:
        for now in range(start, end, step):
            yield now, render_status(simulation.step(now), now)

    return texts


def _world(clients: int, seed: int, first: int) -> Texts:
    """Status texts of a ``world.Dataset`` per phase. A dataset starts with nobody connected,
    so each phase's starts an hour early, unpolled: its first poll finds the clients connected
    as they are at that hour of the day."""

    def texts(start: int, end: int, step: int) -> Iterator[tuple[int, str]]:
        dataset = Dataset(clients, start - HOUR, end, step, seed=seed + start, first=first)
        for now, rows in dataset.polls():
            if now >= start:
                yield now, render_status(rows, now)

    return texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--raw-days", type=float, default=3)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--history-days", type=float, default=0)
    parser.add_argument("--history-interval", type=int, default=3600)
    parser.add_argument(
        "--hourly-days",
        type=float,
        default=0,
        help="the last days of history polled every hour (the hourly tier's detail) whatever "
        "--history-interval says",
    )
    parser.add_argument(
        "--first", type=int, default=0, help="number of the first client name (user-<first>)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--world",
        action="store_true",
        help="the clients of ovpnmon_demo.world (vs_prometheus.py's: sessions of hours, a daily "
        "OpenVPN restart and collector gap) instead of the simulator's (sessions of minutes)",
    )
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    timings = generate(
        args.out,
        args.clients,
        args.raw_days,
        args.interval,
        args.history_days,
        args.history_interval,
        args.hourly_days,
        first=args.first,
        seed=args.seed,
        world=args.world,
    )
    size = os.path.getsize(args.out)
    print(
        f"wrote {args.out}: {size / 1e6:.1f} MB; "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )


if __name__ == "__main__":
    main()
