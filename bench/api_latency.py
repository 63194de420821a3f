"""API latency per endpoint and range, against waitress + Falcon serving precomputed bodies.

On a database from ``bench/generate.py`` (the issue's: 1,000 clients, 3 days of raw samples at
10 s, a year of tiers), in the same run:
- the floor: the same waitress + Falcon, answering every URL with the body the real API gave for
  it, precomputed (so only HTTP, routing and bytes on the wire remain);
- ovpnmon-api as shipped (its response cache on): while the database does not change, a repeated
  request is served from the cache;
- ovpnmon-api with ``cache_mb = 0``: every request computed, as the first request after each
  poll of the collector is;
then 16 concurrent connections for ``--soak`` seconds while a collector writes every second, on
the API as shipped.

    python bench/api_latency.py --db /tmp/big.db [--requests 40] [--soak 60]
    python bench/api_latency.py --db /tmp/bench-10k.db --frozen    # generated earlier

The client asked about is the database's first; ``/usage`` is asked for the periods around the
last poll (``usage_urls``). Resident memory is read after the requests.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchutil import (
    against_floor,
    fetch,
    free_port,
    percentile,
    precompute,
    rss_mb,
    serve_frozen,
    wait_listening,
)

from ovpnmon_common.planner import RANGES


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--soak", type=float, default=60)
    parser.add_argument(
        "--frozen",
        action="store_true",
        help="the APIs' clock stopped 10 s after the database's last poll, as if the collector "
        "had just polled (a database generated earlier); no soak",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ovpnmon-api-bench-"))
    database = str(work / "bench.db")
    shutil.copy(args.db, database)
    # a database of an older schema version is upgraded first, as the collector would
    subprocess.run(
        [sys.executable, "-m", "ovpnmon_collector", "init-db", "--db", database], check=True
    )
    api_port, cold_port = free_port(), free_port()
    config, cold_config = work / "c.conf", work / "cold.conf"
    common = (
        f"[database]\npath = {database}\n[collector]\ninterval = 1\n"
        f"[source:sim]\nstatus_file = {work / 'status.log'}\n"
        f"[retention]\nraw_days = 3\nhourly_days = 400\n[api]\nthreads = 4\n"
    )
    config.write_text(common + f"port = {api_port}\n")
    cold_config.write_text(common + f"port = {cold_port}\ncache_mb = 0\n")
    log = open(work / "api.log", "wb")  # noqa: SIM115
    with sqlite3.connect(database) as db:
        (name,) = db.execute("SELECT common_name FROM clients ORDER BY id LIMIT 1").fetchone()
        (last_poll,) = db.execute("SELECT max(ts) FROM global_history").fetchone()
    children: list[subprocess.Popen[bytes]] = []
    frozen: list[multiprocessing.process.BaseProcess] = []
    if args.frozen:  # as the first request 10 s after the collector's last poll
        for path, port in ((config, api_port), (cold_config, cold_port)):
            frozen.append(
                multiprocessing.get_context("spawn").Process(
                    target=serve_frozen, args=(str(path), last_poll + 10.0, port), daemon=True
                )
            )
            frozen[-1].start()
    else:
        children += [
            subprocess.Popen(
                [sys.executable, "-m", "ovpnmon_api", "serve", "--config", str(path)], stderr=log
            )
            for path in (config, cold_config)
        ]
    try:
        wait_listening(api_port)
        wait_listening(cold_port)
        conn = http.client.HTTPConnection("127.0.0.1", api_port, timeout=600)
        cold_conn = http.client.HTTPConnection("127.0.0.1", cold_port, timeout=600)
        urls = [f"/api/v1/stats/{name}?range={r}" for r in RANGES]
        urls += [f"/api/v1/analytics?range={r}" for r in ("24h", "7d", "30d")]
        urls += ["/api/v1/stats", "/api/v1/stats/system", "/api/v1/clients", "/api/v1/health"]
        urls += ["/api/v1/hosts", "/api/v1/certificates"]
        urls += usage_urls(conn, last_poll)
        urls += ["/api/v1/sessions", "/api/v1/sessions?limit=1000"]
        urls += [f"/api/v1/clients/{name}/sessions"]
        bodies = precompute(conn, urls)
        against_floor(bodies, [("ovpnmon", conn), ("no cache", cold_conn)], args.requests, width=34)
        pids = [p.pid for p in frozen] or [c.pid for c in children]
        print(
            f"resident memory: the API {rss_mb(pids[0]):.0f} MB, "
            f"with cache_mb = 0 {rss_mb(pids[1]):.0f} MB"
        )
        if args.frozen:
            return  # the soak needs a clock that moves

        # --- 16 connections while a collector writes every second ---
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # not installed
        from ovpnmon_demo.simulator import Simulation, render_status, write_in_place

        simulation = Simulation(clients=1000, seed=42)
        status = work / "status.log"
        write_in_place(
            str(status), render_status(simulation.step(int(time.time())), int(time.time()))
        )
        stop = threading.Event()

        def openvpn() -> None:
            while not stop.wait(1):
                now = int(time.time())
                write_in_place(str(status), render_status(simulation.step(now), now))

        threading.Thread(target=openvpn, daemon=True).start()
        collector_log = open(work / "collector.log", "wb")  # noqa: SIM115
        collector = subprocess.Popen(
            [sys.executable, "-m", "ovpnmon_collector", "run", "--config", str(config)],
            stderr=collector_log,
        )
        children.append(collector)
        time.sleep(5)
        latencies: list[float] = []
        failures: list[str] = []
        lock = threading.Lock()

        def worker(seed: int) -> None:
            rng = random.Random(seed)
            c = http.client.HTTPConnection("127.0.0.1", api_port, timeout=60)
            end = time.monotonic() + args.soak
            while time.monotonic() < end:
                url = rng.choice(urls)
                try:
                    status_code, body, elapsed = fetch(c, url)
                except OSError as exc:
                    with lock:
                        failures.append(str(exc))
                    c = http.client.HTTPConnection("127.0.0.1", api_port, timeout=60)
                    continue
                with lock:
                    latencies.append(elapsed * 1000)
                    if status_code != 200 or b"locked" in body:
                        failures.append(f"{url} {status_code} {body[:100]!r}")

        began = time.monotonic()
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - began
        stop.set()
        locked = (work / "api.log").read_text().count("locked") + (
            work / "collector.log"
        ).read_text().count("locked")
        print(
            f"\n16 connections for {elapsed:.0f} s with the collector polling 1,000 clients every second: "
            f"{len(latencies) / elapsed:.0f} req/s, p50 {statistics.median(latencies):.1f} ms, "
            f"p99 {percentile(latencies, 0.99):.1f} ms, {len(failures)} errors, "
            f"{locked} 'database is locked'"
        )
        for failure in failures[:5]:
            print("  ", failure)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=30)
        for process in frozen:
            process.terminate()
            process.join(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


def usage_urls(conn: http.client.HTTPConnection, last_poll: int) -> list[str]:
    """``/usage`` of every client for the periods around the last poll (the API's time zone is
    UTC here): its month, its ISO week, the whole day before it, and the month before when the
    database reaches back that far (a period before all data is a 400)."""
    day = time.gmtime(last_poll)
    before = time.gmtime(last_poll - 86400)
    year, week, _ = datetime.date(day.tm_year, day.tm_mon, day.tm_mday).isocalendar()
    previous = (day.tm_year, day.tm_mon - 1) if day.tm_mon > 1 else (day.tm_year - 1, 12)
    periods = [
        f"{day.tm_year}-{day.tm_mon:02d}",
        f"{year}-W{week:02d}",
        f"{before.tm_year}-{before.tm_mon:02d}-{before.tm_mday:02d}",
    ]
    last_month = f"/api/v1/usage?period={previous[0]}-{previous[1]:02d}"
    urls = [f"/api/v1/usage?period={period}" for period in periods]
    return urls + ([last_month] if fetch(conn, last_month)[0] == 200 else [])


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
