"""What schema 6's covering time index costs the rollup job each minute.

Every minute the daemon adds the last minute's samples to each active client's row of the
15-minute bucket in progress (``rollup.sum_open``): thousands of upserts that change the bytes,
and since schema 6 each such change also moves the row's entry in the tier's ``(bucket,
client_id, bytes_received, bytes_sent)`` index (schema 5 indexed ``(bucket)`` alone).

In the same run, alternating: a ``stats_15min`` of ``--clients`` clients × ``--buckets`` buckets
with each index, then 15 minutes of upserts of ``--active`` clients into its last bucket through
the rollup's own ``_add`` (one transaction a minute, the writer engine's settings). Prints each
case's p50 per minute.

    python bench/open_upsert.py [--clients 10000] [--active 6500] [--buckets 96] [--rounds 4]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from ovpnmon_collector import rollup
from ovpnmon_common import schema
from ovpnmon_common.storage import engines
from ovpnmon_common.tiers import BY_NAME

TIER = BY_NAME["quarter_hour"]
WIDTH = 900
SCHEMA_6_INDEX = "ix_stats_15min_bucket_client_id_bytes_received_bytes_sent"


def one_round(work: Path, schema_5: bool, args: argparse.Namespace, rng: random.Random) -> float:
    """The p50 of 15 minutes' upserts into a fresh table with schema 5's or 6's index (ms)."""
    path = work / f"{'5' if schema_5 else '6'}-{rng.random()}.db"
    engine = engines.writer_engine(str(path))
    schema.metadata.create_all(engine, tables=[schema.clients, TIER.table])
    ids = range(1, args.clients + 1)
    with engine.begin() as conn:
        db = conn.connection.driver_connection
        assert db is not None
        if schema_5:
            db.execute(f"DROP INDEX {SCHEMA_6_INDEX}")
            db.execute("CREATE INDEX ix_stats_15min_bucket ON stats_15min (bucket)")
        db.executemany(
            "INSERT INTO clients VALUES (?, ?, 1, 0, 0, 1, 0, 0)", [(i, f"c{i}") for i in ids]
        )
        db.executemany(
            "INSERT INTO stats_15min VALUES (?, ?, ?, ?, 90)",
            (
                (c, b * WIDTH, rng.randrange(1 << 30), rng.randrange(1 << 28))
                for b in range(args.buckets)
                for c in ids
            ),
        )
    last = (args.buckets - 1) * WIDTH
    times = []
    with engine.connect() as conn:
        for _ in range(15):
            rows = sorted(
                (c, last, rng.randrange(1 << 20), rng.randrange(1 << 18), 6)
                for c in rng.sample(ids, args.active)
            )
            began = time.perf_counter()
            with conn.begin():
                rollup._add(conn, TIER, rows)
            times.append((time.perf_counter() - began) * 1000)
    engines.close_writer(engine)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10000)
    parser.add_argument("--active", type=int, default=6500)
    parser.add_argument("--buckets", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    rng = random.Random(6)
    found: dict[bool, list[float]] = {True: [], False: []}
    with tempfile.TemporaryDirectory(prefix="ovpnmon-open-upsert-") as work:
        for _ in range(args.rounds):
            for schema_5 in (True, False):
                found[schema_5].append(one_round(Path(work), schema_5, args, rng))
    print(
        f"a minute's upsert of {args.active:,} rows into the bucket in progress "
        f"({args.clients:,} clients × {args.buckets} buckets), p50 of 15 per round:"
    )
    for schema_5, label in ((True, "schema 5, (bucket)"), (False, "schema 6, covering")):
        rounds = ", ".join(f"{x:.0f}" for x in found[schema_5])
        print(f"  {label:20s} {statistics.median(found[schema_5]):6.0f} ms  (rounds: {rounds})")
    ratio = statistics.median(found[False]) / statistics.median(found[True])
    print(f"  schema 6 ÷ schema 5: {ratio:.2f}")


if __name__ == "__main__":
    main()
