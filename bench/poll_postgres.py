"""One poll of 10,000 concurrent sessions into PostgreSQL, against psycopg writing the same rows.

A PostgreSQL cluster of its own (tests/pg_harness.py: Debian's server, a temporary directory,
127.0.0.1 only, ``fsync=off`` as in the tests — the same for the floors and for ovpnmon). The
floors, in the same run, each one transaction into tables of the same shape as ovpnmon's: what
a steady poll stores — one sample per client (9,000) and the new counters of every session
(10,000 rows) — with psycopg's ``executemany`` (floor 1, the issue's) and with ``COPY`` (floor 2);
and (floor 3) the rows ovpnmon literally writes: the 9,000 samples and one packed value with the
10,000 counters, by ``executemany``. Floors and polls take turns; medians of ``--repeat``.

    python bench/poll_postgres.py [--sessions 10000] [--repeat 15]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # ovpnmon_demo: not installed
sys.path.insert(0, str(ROOT / "tests"))  # pg_harness

import pg_harness
import psycopg
from poll_10k import T0, sessions

from ovpnmon_collector.collector import Collector
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.store import Store
from ovpnmon_common.counters import pack
from ovpnmon_common.storage.engines import writer_engine
from ovpnmon_common.storage.migrations import init_db
from ovpnmon_demo.clock import ManualClock
from ovpnmon_demo.simulator import render_status, write_in_place

FLOOR_TABLES = """
CREATE TABLE samples (ts bigint, client_id int, bytes_received bigint, bytes_sent bigint,
                      PRIMARY KEY (ts, client_id));
CREATE TABLE counters (session_id int PRIMARY KEY, bytes_received bigint, bytes_sent bigint);
CREATE TABLE packed (source text PRIMARY KEY, ts bigint, counters bytea);
"""


class Floors:
    """psycopg writing a steady poll's rows, three ways."""

    def __init__(self, dsn: str, count: int) -> None:
        self.conn = psycopg.connect(dsn)
        self.conn.execute(FLOOR_TABLES)
        self.conn.commit()
        self.clients = count * 9 // 10
        self.count = count
        self.step = 0

    def rows(self) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
        self.step += 1
        ts = T0 + 10 * self.step
        samples = [(ts, c, 1000 + c, 500 + c) for c in range(1, self.clients + 1)]
        counters = [(s, 10_000 * self.step + s, 5000 * self.step + s) for s in range(self.count)]
        return samples, counters

    def executemany(self) -> float:
        samples, counters = self.rows()
        started = time.perf_counter()
        with self.conn.cursor() as cur:
            cur.executemany("INSERT INTO samples VALUES (%s, %s, %s, %s)", samples)
            cur.executemany(
                "INSERT INTO counters VALUES (%s, %s, %s) ON CONFLICT (session_id) DO UPDATE "
                "SET bytes_received = excluded.bytes_received, bytes_sent = excluded.bytes_sent",
                counters,
            )
        self.conn.commit()
        return time.perf_counter() - started

    def copy(self) -> float:
        samples, counters = self.rows()
        started = time.perf_counter()
        with self.conn.cursor() as cur:
            with cur.copy("COPY samples FROM STDIN") as copy:
                for row in samples:
                    copy.write_row(row)
            cur.execute("CREATE TEMP TABLE IF NOT EXISTS new_counters (LIKE counters)")
            cur.execute("TRUNCATE new_counters")
            with cur.copy("COPY new_counters FROM STDIN") as copy:
                for row in counters:
                    copy.write_row(row)
            cur.execute(
                "UPDATE counters c SET bytes_received = n.bytes_received, "
                "bytes_sent = n.bytes_sent FROM new_counters n WHERE n.session_id = c.session_id"
            )
        self.conn.commit()
        return time.perf_counter() - started

    def packed(self) -> float:
        samples, counters = self.rows()
        started = time.perf_counter()
        ids, received, sent = zip(*counters, strict=True)
        value = pack(ids, received, sent)
        with self.conn.cursor() as cur:
            cur.executemany("INSERT INTO samples VALUES (%s, %s, %s, %s)", samples)
            cur.execute(
                "INSERT INTO packed VALUES ('bench', %s, %s) ON CONFLICT (source) DO UPDATE "
                "SET ts = excluded.ts, counters = excluded.counters",
                (samples[0][0], value),
            )
        self.conn.commit()
        return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    why = pg_harness.unavailable()
    if why:
        raise SystemExit(why)
    cluster = pg_harness.Cluster()
    try:
        work = Path(tempfile.mkdtemp(prefix="ovpnmon-pg-bench-"))
        url = cluster.database()
        floors = Floors(
            cluster.database().replace("postgresql+psycopg", "postgresql"), args.sessions
        )
        engine = writer_engine(url)
        init_db(engine)
        status = work / "status.log"
        clock = ManualClock(T0 - 120, T0 - 120)
        collector = Collector(
            Store(engine), [StatusFileSource("bench", str(status), settle=0)], clock=clock
        )

        def poll(step: int) -> float:
            clock.set(T0 + 10 * step)
            write_in_place(
                str(status), render_status(sessions(args.sessions, step), T0 + 10 * step)
            )
            started = time.perf_counter()
            summary = collector.poll()
            elapsed = time.perf_counter() - started
            assert summary.stored and not summary.failed, summary
            return elapsed

        first = poll(0)
        times: dict[str, list[float]] = {"executemany": [], "copy": [], "packed": [], "poll": []}
        for step in range(1, args.repeat + 1):
            times["executemany"].append(floors.executemany())
            times["copy"].append(floors.copy())
            times["packed"].append(floors.packed())
            times["poll"].append(poll(step))
        p50 = {name: statistics.median(values) * 1000 for name, values in times.items()}
        print(
            f"sessions per poll: {args.sessions} ({args.sessions * 9 // 10} CNs), "
            f"median of {args.repeat}; PostgreSQL {cluster.bin.split('/')[-2]} on 127.0.0.1\n"
        )
        print(f"  floor 1, executemany (samples + counter rows): {p50['executemany']:7.1f} ms")
        print(f"  floor 2, COPY (samples + counter rows):        {p50['copy']:7.1f} ms")
        print(f"  floor 3, executemany (samples + one packed):   {p50['packed']:7.1f} ms")
        print(
            f"  ovpnmon steady-state poll:                     {p50['poll']:7.1f} ms  "
            f"{p50['poll'] / p50['executemany']:.2f}x / {p50['poll'] / p50['copy']:.2f}x / "
            f"{p50['poll'] / p50['packed']:.2f}x"
        )
        print(f"  ovpnmon first poll (opens all):              {first * 1000:7.1f} ms")
        collector.close()
        engine.dispose()
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
