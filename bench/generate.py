"""Make a big, realistic ovpnmon database through the collector's own code paths.

N simulated clients with daily rhythms, connects and disconnects (and one duplicate-cn pair) write
real-format status text; the real collector parses, accounts and stores every poll. Older history
is polled coarsely (its tiers are what matters), the last days at the real interval, then every
tier is rolled up.

    python bench/generate.py --clients 1000 --raw-days 3 --interval 10 --history-days 365 \\
        --out /tmp/ovpnmon-bench.db

``--first`` and ``--seed`` make another host's database: clients from ``user-<first>`` on, with
their own rhythms (``bench/api_postgres.py`` puts three such into one fleet database).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ovpnmon_demo: not installed

from ovpnmon_collector import pack, rollup
from ovpnmon_common.storage import engines, migrations
from ovpnmon_demo.simulator import Simulation, populate

DAY = 86400


def generate(
    out: str,
    clients: int,
    raw_days: float,
    interval: int,
    history_days: float = 0,
    history_interval: int = 3600,
    now: int | None = None,
    first: int = 0,
    seed: int = 42,
    pack_samples: bool = True,
) -> dict[str, float]:
    """Write the database; returns timings. ``now`` defaults to the current time. The raw
    samples of final buckets are packed, as the daemon leaves them, unless ``pack_samples`` is
    False (``rollup_day.py`` rolls up rows)."""
    now = now or int(time.time())
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(out + suffix):
            os.unlink(out + suffix)
    engine = engines.writer_engine(out)
    migrations.init_db(engine)
    status = str(Path(out).with_suffix(".status"))
    simulation = Simulation(clients=clients, seed=seed, first=first)
    raw_start = now - int(raw_days * DAY)
    timings = {}
    started = time.perf_counter()
    if history_days > raw_days:
        populate(
            engine, status, now - int(history_days * DAY), raw_start, history_interval, simulation
        )
    timings["history_s"] = time.perf_counter() - started
    started = time.perf_counter()
    populate(engine, status, raw_start, now, interval, simulation)
    timings["raw_s"] = time.perf_counter() - started
    started = time.perf_counter()
    rollup.catch_up(engine, now)
    timings["rollup_s"] = time.perf_counter() - started
    if pack_samples:
        started = time.perf_counter()
        pack.catch_up(engine)
        timings["pack_s"] = time.perf_counter() - started
    engines.close_writer(engine)
    os.unlink(status)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--raw-days", type=float, default=3)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--history-days", type=float, default=0)
    parser.add_argument("--history-interval", type=int, default=3600)
    parser.add_argument(
        "--first", type=int, default=0, help="number of the first client name (user-<first>)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    timings = generate(
        args.out,
        args.clients,
        args.raw_days,
        args.interval,
        args.history_days,
        args.history_interval,
        first=args.first,
        seed=args.seed,
    )
    size = os.path.getsize(args.out)
    print(
        f"wrote {args.out}: {size / 1e6:.1f} MB; "
        + ", ".join(f"{k} {v:.1f}" for k, v in timings.items())
    )


if __name__ == "__main__":
    main()
