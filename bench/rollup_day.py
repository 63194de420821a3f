"""Roll up one day of raw samples into every tier, against plain-sqlite3 INSERT…SELECT…GROUP BY.

Generates (or reuses) a database with one day of raw samples (default: 1,000 clients at 10 s,
8.64 M rows) through the collector's code, copies it twice, and in the same run times
- the floor: one ``INSERT … SELECT … GROUP BY`` per tier in plain ``sqlite3``;
- ovpnmon's ``rollup.catch_up`` (the daemon's and ``ovpnmon-collector rollup``'s code);
then the steady state: the CPU cost of rolling up one more hour, and the size per raw sample.

    python bench/rollup_day.py [--clients 1000] [--interval 10] [--db /tmp/day.db]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sqlite3
import tempfile
import time

from generate import generate

from ovpnmon_collector import pack, rollup
from ovpnmon_common import schema
from ovpnmon_common.storage import engines

DAY = 86400
# the floor: the same aggregation, one statement per tier, as a person would write it in SQL
FLOOR = [
    "INSERT INTO stats_15min SELECT client_id, ts - ts % 900, sum(bytes_received),"
    " sum(bytes_sent), count(*) FROM usage_history WHERE ts < :end GROUP BY 1, 2",
    "INSERT INTO stats_hourly SELECT client_id, bucket - bucket % 3600, sum(bytes_received),"
    " sum(bytes_sent), sum(samples) FROM stats_15min WHERE bucket < :end GROUP BY 1, 2",
    "INSERT INTO stats_6h SELECT client_id, bucket - bucket % 21600, sum(bytes_received),"
    " sum(bytes_sent), sum(samples) FROM stats_hourly WHERE bucket < :end GROUP BY 1, 2",
    "INSERT INTO stats_daily SELECT client_id, bucket - bucket % 86400, sum(bytes_received),"
    " sum(bytes_sent), sum(samples) FROM stats_6h WHERE bucket < :end GROUP BY 1, 2",
    "INSERT INTO global_15min SELECT ts - ts % 900, host_id, sum(bytes_received), sum(bytes_sent),"
    " max(active_count), count(*) FROM global_history WHERE ts < :end GROUP BY 1, 2",
]


def clear_tiers(path: str) -> None:
    engine = engines.writer_engine(path)
    schema.metadata.create_all(engine)  # a database made before a tier was added gets it
    engines.close_writer(engine)
    conn = sqlite3.connect(path, isolation_level=None)
    if conn.execute("SELECT count(*) FROM usage_packed").fetchone()[0]:
        raise SystemExit(f"{path} holds packed raw samples: the floor reads rows; generate anew")
    for table in ("stats_15min", "stats_hourly", "stats_6h", "stats_daily", "global_15min"):
        conn.execute(f"DELETE FROM {table}")
    conn.execute("DELETE FROM meta WHERE key LIKE 'rollup.%' OR key LIKE 'pack.%'")
    conn.execute("VACUUM")
    conn.close()


def cpu() -> float:
    return time.process_time()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--db", help="reuse (or create) this one-day database")
    args = parser.parse_args()
    day_start = 1_795_651_200  # 2026-11-26 00:00 UTC
    end = day_start + DAY
    with tempfile.TemporaryDirectory(prefix="ovpnmon-rollup-") as tmp:
        source = args.db or os.path.join(tmp, "day.db")
        if not os.path.exists(source):
            started = time.perf_counter()
            generate(
                source, args.clients, 1 + 1 / 24, args.interval, now=end + 3600, pack_samples=False
            )
            print(f"generated {source} in {time.perf_counter() - started:.0f} s")
        clear_tiers(source)
        conn = sqlite3.connect(source)
        rows = conn.execute("SELECT count(*) FROM usage_history WHERE ts < ?", (end,)).fetchone()[0]
        total = conn.execute("SELECT count(*) FROM usage_history").fetchone()[0]
        conn.close()
        floor_db, ours_db = os.path.join(tmp, "floor.db"), os.path.join(tmp, "ours.db")
        shutil.copy(source, floor_db)
        shutil.copy(source, ours_db)

        conn = sqlite3.connect(floor_db, isolation_level=None)
        started = time.perf_counter()
        conn.execute("BEGIN")
        for statement in FLOOR:
            conn.execute(statement, {"end": end})
        conn.execute("COMMIT")
        floor = time.perf_counter() - started
        conn.close()

        engine = engines.writer_engine(ours_db)
        started = time.perf_counter()
        rollup.catch_up(engine, end)
        ours = time.perf_counter() - started

        before = cpu()
        rollup.catch_up(engine, end + 3600)  # the next hour closes: the daemon's steady work
        per_hour = cpu() - before
        unpacked = os.path.getsize(ours_db)
        started = time.perf_counter()
        buckets = pack.catch_up(engine)  # then the daemon packs the final buckets' raw samples
        packing = time.perf_counter() - started
        engines.close_writer(engine)
        with sqlite3.connect(ours_db) as conn:
            conn.execute("VACUUM")  # the pages the rows left: reused by the next polls
        size = os.path.getsize(ours_db)

    print(
        f"raw samples rolled up:        {rows:,} ({args.clients} clients, one day at {args.interval} s)"
    )
    print(f"floor (INSERT…SELECT…GROUP BY per tier): {floor:7.2f} s")
    print(f"ovpnmon rollup.catch_up:                 {ours:7.2f} s   ratio {ours / floor:.2f}x")
    print(
        f"steady state: {per_hour:.3f} CPU s per hour of wall time ({per_hour / 3600 * 100:.4f} % of a core)"
    )
    print(
        f"packing the day's raw samples (not a rollup: its own step): {packing:.2f} s, "
        f"{buckets} buckets, {packing / max(buckets, 1) * 1000:.0f} ms a bucket"
    )
    print(
        "database size per raw sample (indexes and tiers included): "
        f"{unpacked / total:.1f} bytes as rows, {size / total:.1f} bytes packed"
    )


if __name__ == "__main__":
    main()
