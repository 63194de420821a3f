"""One poll of 10,000 concurrent sessions: parse, account, write — against a plain-sqlite3 floor.

The floor, measured in the same run on the same disk: what a steady-state poll stores — one
sample per client and the new counters of every session — inserted as rows with
``sqlite3.executemany`` in one transaction into tables of the same shape. ovpnmon stores the
same counters packed into one value per source (schema version 2), so a second floor is printed
too: the sample rows plus one such value, i.e. literally the rows ovpnmon writes. ovpnmon also
inserts its samples 100 rows per statement, which SQLite does in well under half the time of
``executemany``; the third floor is the second with that done too — the cost of ovpnmon's SQL
alone, so what the Python around it costs can be read off without trusting anyone. The floors'
transactions and ovpnmon's polls take turns, so that a machine whose speed drifts moves both.
Everything is measured twice: on new databases, and with ``--history-polls`` polls of samples
already stored (an hour by default) in ovpnmon's and the floors' tables alike, which is what a
poll meets on a real host. Prints the figures, the ratios and peak RSS (of this process, and of
a process that only polls, as the daemon does).

The first poll meets the clients in one order and every later poll in another, fixed one, as on
a real server: OpenVPN lists clients in its hash table's order, unrelated to the order ovpnmon
first saw them in (which its objects and client ids follow). That costs a poll several ms of
cache misses; ``--first-seen-order`` keeps one order throughout (as right after a start).
The process first asks glibc to keep freed memory between polls, as ``ovpnmon-collector run``
does (``daemon.keep_freed_memory``); ``--system-malloc`` leaves glibc's defaults.

    python bench/poll_10k.py [--sessions 10000] [--repeat 15] [--history-polls 360]
                             [--first-seen-order] [--warm-caches] [--system-malloc]
                             [--churn N]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from itertools import chain
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ovpnmon_demo: not installed

from ovpnmon_collector.collector import Collector
from ovpnmon_collector.daemon import keep_freed_memory
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.store import Store
from ovpnmon_common.counters import pack
from ovpnmon_common.storage.engines import writer_engine
from ovpnmon_common.storage.migrations import init_db
from ovpnmon_demo.clock import ManualClock
from ovpnmon_demo.simulator import render_status, write_in_place

T0 = 1_795_717_500


def sessions(count: int, step: int) -> list[SessionRow]:
    # 10,000 sessions of 9,000 CNs: some hold two (duplicate-cn)
    return [
        SessionRow(
            common_name=f"client-{i % (count * 9 // 10):05d}",
            real_address=f"127.0.{i // 250}.{i % 250 + 1}:{40000 + i % 20000}",
            virtual_address=f"10.8.{i // 250}.{i % 250 + 2}",
            virtual_ipv6="",
            bytes_received=1_000_000 + step * (i * 37 % 5000),
            bytes_sent=500_000 + step * (i * 11 % 3000),
            connected_since=T0 - 60,
            client_id=i,
        )
        for i in range(count)
    ]


def history(clients: int, polls: int, before: int) -> Iterator[tuple[int, int, int, int]]:
    """(client, ts, rx, tx) of ``polls`` polls every 10 s before ``before``, in time order."""
    for k in range(polls, 0, -1):
        for client in range(1, clients + 1):
            yield client, before - 10 * k, 1000 + client, 500 + client


class Caches:
    """Evicts the CPU caches before each timed transaction or poll (unless ``warm``): the daemon
    polls after ten seconds in which OpenVPN, the API and everything else ran, never with the
    previous poll's data still in cache. A walk over 64 MiB, kept in one buffer so that it
    disturbs no Python heap."""

    def __init__(self, warm: bool) -> None:
        self.warm = warm
        self.buffer = bytearray(0 if warm else 64 << 20)
        self.zeros = bytes(len(range(0, len(self.buffer), 64)))

    def evict(self) -> None:
        if not self.warm:
            self.buffer[::64] = self.zeros  # one write per cache line


def ovpnmon_polls(
    workdir: Path,
    count: int,
    repeat: int,
    polls: int,
    shuffled: bool,
    caches: Caches,
    churn: int = 0,
) -> Iterator[float]:
    """Seconds of the first poll, then of each of ``repeat`` steady polls, one per next()."""
    status = workdir / "status.log"
    path = workdir / "ovpnmon.db"
    engine = writer_engine(str(path))
    init_db(engine)
    clock = ManualClock(T0 - 120, T0 - 120)  # first watched before the sessions connected
    collector = Collector(
        Store(engine), [StatusFileSource("bench", str(status), settle=0)], clock=clock
    )
    # OpenVPN lists clients in its hash table's order, which has nothing to do with the order
    # ovpnmon first saw them in (their client ids): the first poll meets them in one order, every
    # later poll in another, fixed one.
    order = list(range(count))
    if shuffled:
        random.Random(7).shuffle(order)
    # Rendered before any poll, so that the collector's heap between polls is its own, as in
    # the daemon (rendering in between made polls a few ms slower here).
    # --churn: every poll, that many sessions reconnect (a new Client ID and Connected Since,
    # same CN and place in the list): one closes and one opens, as on a big server all day
    reconnected: dict[int, int] = {}  # position -> the step it last reconnected at
    for step in range(repeat + 1):
        rows = sessions(count, step)
        for k in range(churn if step else 0):
            reconnected[(step * churn + k) * 7919 % count] = step
        for at, since_step in reconnected.items():
            rows[at] = rows[at]._replace(
                client_id=count * since_step + at,
                connected_since=T0 + 10 * since_step - 5,
                bytes_received=1000 * (step - since_step + 1),
                bytes_sent=500 * (step - since_step + 1),
            )
        text = render_status([rows[i] for i in order] if step else rows, T0 + 10 * step)
        (workdir / f"status.{step}").write_text(text)
    del rows, text

    def text_of(step: int) -> str:
        return (workdir / f"status.{step}").read_text()

    write_in_place(str(status), text_of(0))
    caches.evict()
    start = time.perf_counter()
    summary = collector.poll()  # the first poll: 10,000 sessions opened
    first = time.perf_counter() - start
    assert summary.stored and summary.sessions == count, summary
    yield first
    if polls:  # earlier polls' samples, as a host that has run for a while has them
        conn = connect(path)
        conn.execute("BEGIN")
        conn.executemany(
            "INSERT INTO usage_history (client_id, ts, bytes_received, bytes_sent)"
            " VALUES (?, ?, ?, ?)",
            history(count * 9 // 10, polls, int(clock.wall)),
        )
        (host,) = conn.execute("SELECT id FROM hosts").fetchone()  # the first poll's
        conn.executemany(
            "INSERT INTO global_history (ts, host_id, bytes_received, bytes_sent, active_count,"
            " interval) VALUES (?, ?, 0, 0, 0, 10.0)",
            ((int(clock.wall) - 10 * k, host) for k in range(polls, 0, -1)),
        )
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
    for step in range(1, repeat + 1):
        clock.advance(10)
        write_in_place(str(status), text_of(step))
        caches.evict()
        start = time.perf_counter()
        summary = collector.poll()
        took = time.perf_counter() - start
        assert summary.stored and not summary.failed, summary
        yield took
    collector.close()


def floor_steps(
    workdir: Path, count: int, repeat: int, polls: int, caches: Caches
) -> Iterator[tuple[float, ...]]:
    """Seconds of (samples + counter rows, samples + one packed value, the same with the samples
    in 100-row statements) for each of ``repeat`` polls, one per next(); each in a file of its
    own so that no table grows with another's rows. Tables keyed time first, like ovpnmon's raw
    samples. Every row is built before the first step, so that the steps, which take turns with
    ovpnmon's polls in this process, allocate nothing in between."""
    rows, literal = connect(workdir / "floor.db"), connect(workdir / "literal.db")
    batched = connect(workdir / "batched.db")
    for conn in (rows, literal, batched):
        conn.execute(
            "CREATE TABLE samples (client_id INTEGER, ts INTEGER, rx INTEGER, tx INTEGER,"
            " PRIMARY KEY (ts, client_id)) WITHOUT ROWID"
        )
    rows.execute(
        "CREATE TABLE counters (session_id INTEGER, ts INTEGER, rx INTEGER, tx INTEGER,"
        " PRIMARY KEY (ts, session_id)) WITHOUT ROWID"
    )
    for conn in (literal, batched):
        conn.execute("CREATE TABLE packed (source TEXT PRIMARY KEY, ts INTEGER, counters BLOB)")
    clients = count * 9 // 10
    hundred = "INSERT INTO samples VALUES " + ", ".join(["(?, ?, ?, ?)"] * 100)
    if polls:
        for conn in (rows, literal, batched):
            conn.execute("BEGIN")
            samples = history(clients, polls, T0)
            conn.executemany("INSERT INTO samples VALUES (?, ?, ?, ?)", samples)
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        rows.execute("BEGIN")
        rows.executemany("INSERT INTO counters VALUES (?, ?, ?, ?)", history(count, polls, T0))
        rows.execute("COMMIT")
        rows.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    prepared = []
    for step in range(1, repeat + 1):
        ts = T0 + 10 * step
        samples = [(c, ts, 1000 + c, 500 + c) for c in range(clients)]
        counters = [(s, ts, 1_000_000 + s, 500_000 + s) for s in range(count)]
        blob = pack(range(count), (c[2] for c in counters), (c[3] for c in counters))
        prepared.append((ts, samples, counters, blob))
    for ts, samples, counters, blob in prepared:
        caches.evict()
        start = time.perf_counter()
        rows.execute("BEGIN IMMEDIATE")
        rows.executemany("INSERT INTO samples VALUES (?, ?, ?, ?)", samples)
        rows.executemany("INSERT INTO counters VALUES (?, ?, ?, ?)", counters)
        rows.execute("COMMIT")
        row_time = time.perf_counter() - start
        caches.evict()
        start = time.perf_counter()
        literal.execute("BEGIN IMMEDIATE")
        literal.executemany("INSERT INTO samples VALUES (?, ?, ?, ?)", samples)
        literal.execute("INSERT OR REPLACE INTO packed VALUES ('bench', ?, ?)", (ts, blob))
        literal.execute("COMMIT")
        literal_time = time.perf_counter() - start
        caches.evict()
        start = time.perf_counter()
        flat = tuple(chain.from_iterable(samples))
        batched.execute("BEGIN IMMEDIATE")
        batched.executemany(hundred, [flat[at : at + 400] for at in range(0, len(flat), 400)])
        batched.execute("INSERT OR REPLACE INTO packed VALUES ('bench', ?, ?)", (ts, blob))
        batched.execute("COMMIT")
        yield row_time, literal_time, time.perf_counter() - start
    for conn in (rows, literal, batched):
        conn.close()


def collector_rss(workdir: Path, count: int, polls: int) -> float:
    """Peak RSS (MB) of a process that does nothing but ``polls`` polls of ``count`` sessions,
    as the daemon does (this process also holds the floors' rows and the benchmark's own data).
    """
    for step in range(polls):
        (workdir / f"status.{step}").write_text(
            render_status(sessions(count, step), T0 + 10 * step)
        )
    out = subprocess.run(
        [sys.executable, __file__, "--child-rss", str(workdir), str(polls)],
        check=True,
        capture_output=True,
        text=True,
    )
    return float(out.stdout)


def child_rss(workdir: Path, polls: int) -> None:
    keep_freed_memory()
    engine = writer_engine(str(workdir / "child.db"))
    init_db(engine)
    clock = ManualClock(T0 - 120, T0 - 120)  # first watched before the sessions connected
    collector = Collector(
        Store(engine), [StatusFileSource("bench", str(workdir / "status"), settle=0)], clock=clock
    )
    for step in range(polls):
        os.replace(workdir / f"status.{step}", workdir / "status")
        assert collector.poll().stored
        clock.advance(10)
    collector.close()
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec
    status = Path("/proc/self/status").read_text()
    print(int(status.split("VmHWM:")[1].split()[0]) / 1024)


def connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    return conn


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--history-polls", type=int, default=360)
    parser.add_argument("--system-malloc", action="store_true", help="glibc's defaults")
    parser.add_argument(
        "--first-seen-order",
        action="store_true",
        help="every poll lists clients in the order ovpnmon first saw them (as right after a start)",
    )
    parser.add_argument(
        "--warm-caches",
        action="store_true",
        help="do not evict the CPU caches before each timed transaction and poll",
    )
    parser.add_argument(
        "--churn", type=int, default=0, help="sessions that reconnect every poll (default 0)"
    )
    parser.add_argument("--child-rss", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child_rss:
        child_rss(Path(args.child_rss[0]), int(args.child_rss[1]))
        return
    kept = not args.system_malloc and keep_freed_memory()
    caches = Caches(args.warm_caches)
    print(
        f"sessions per poll: {args.sessions} ({args.sessions * 9 // 10} CNs), median of {args.repeat}"
        f"; freed memory {'kept between polls, as the daemon does' if kept else 'given back'}"
        f"; CPU caches {'warm' if args.warm_caches else 'evicted before each timed step'}"
        + (f"; {args.churn} sessions reconnect every poll" if args.churn else "")
    )
    for polls in sorted({0, args.history_polls}):
        with tempfile.TemporaryDirectory(prefix="ovpnmon-bench-") as tmp:
            workdir = Path(tmp)
            # Interleaved, a floor transaction then a poll, so that both meet the same moments
            # of a machine whose speed drifts: the ratio is what this benchmark is for.
            floor_iter = floor_steps(workdir, args.sessions, args.repeat, polls, caches)
            shuffled = not args.first_seen_order
            poll_iter = ovpnmon_polls(
                workdir, args.sessions, args.repeat, polls, shuffled, caches, args.churn
            )
            first = next(poll_iter)
            pairs = [(next(floor_iter), next(poll_iter)) for _ in range(args.repeat)]
            for leftover in (floor_iter, poll_iter):
                assert next(leftover, None) is None  # both ran to the end (and closed)
            size = os.path.getsize(workdir / "status.log")
        floors = [statistics.median(f[k] for f, _ in pairs) for k in range(3)]
        steady = statistics.median(took for _, took in pairs)
        print(
            f"\n{'new databases' if not polls else f'{polls} polls of samples already stored'}"
            f" (status file {size / 1e6:.1f} MB):"
        )
        labels = (
            "floor 1, samples + counter rows:",
            "floor 2, samples + one packed value:",
            "floor 3, as 2 in 100-row statements:",
        )
        for label, floor in zip(labels, floors, strict=True):
            print(f"  {label:38s} {floor * 1000:7.1f} ms")
        for label, took in (("steady-state poll:", steady), ("first poll (opens all):", first)):
            ratios = " / ".join(f"{took / floor:.2f}x" for floor in floors)
            print(f"  ovpnmon {label:30s} {took * 1000:7.1f} ms  {ratios}")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with tempfile.TemporaryDirectory(prefix="ovpnmon-bench-") as tmp:
        alone = collector_rss(Path(tmp), args.sessions, args.repeat + 1)
    print(f"\npeak RSS of this process: {rss_mb:.1f} MB")
    print(f"peak RSS of a process that only polls, as the daemon: {alone:.1f} MB")


if __name__ == "__main__":
    main()
