"""One ``/metrics`` scrape at 1,000 and 10,000 clients against the floor of the same waitress
serving the same body precomputed, measured in the same run.

    .venv/bin/python bench/metrics_scrape.py            # 1,000 and 10,000 clients
    .venv/bin/python bench/metrics_scrape.py --clients 2000

Each database is written by the collector's own code (two polls of one session per client, so
every counter has moved); scrapes go over HTTP on one keep-alive connection, real and floor
alternating, median of --repeat.
"""

from __future__ import annotations

import argparse
import http.client
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ovpnmon_demo: not installed

from benchutil import free_port, wait_listening

from ovpnmon_collector.collector import Collector
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_collector.store import Store
from ovpnmon_common.storage import engines, migrations
from ovpnmon_demo.clock import ManualClock
from ovpnmon_demo.simulator import render_status, write_in_place

ROOT = Path(__file__).resolve().parents[1]
T0 = int(time.time()) - 60


def database(work: Path, clients: int) -> Path:
    path = work / f"metrics-{clients}.db"
    engine = engines.writer_engine(str(path))
    migrations.init_db(engine)
    status = work / f"status-{clients}.log"
    clock = ManualClock(T0, T0)
    collector = Collector(
        Store(engine), [StatusFileSource("udp", str(status), settle=0)], clock=clock
    )
    for step in range(2):
        rows = [
            SessionRow(
                f"client-{i:05d}",
                f"127.0.{i // 250}.{i % 250 + 1}:{40000 + i % 20000}",
                f"10.8.{i // 250}.{i % 250 + 2}",
                "",
                step * 1000 * (i + 1),
                step * 100 * (i + 1),
                T0 - 30,
                i,
            )
            for i in range(clients)
        ]
        write_in_place(str(status), render_status(rows, int(clock.wall)))
        assert collector.poll().stored
        clock.advance(10)
    engines.close_writer(engine)
    return path


def floor_server(port: int, body: bytes) -> None:
    import waitress

    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain; version=0.0.4; charset=utf-8")])
        return [body]

    threading.Thread(
        target=waitress.serve,
        kwargs={"app": app, "host": "127.0.0.1", "port": port, "threads": 4, "_quiet": True},
        daemon=True,
    ).start()


def get(conn: http.client.HTTPConnection) -> tuple[float, bytes]:
    started = time.perf_counter()
    conn.request("GET", "/metrics")
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200, body[:200]
    return (time.perf_counter() - started) * 1000, body


def measure(work: Path, clients: int, repeat: int) -> None:
    db = database(work, clients)
    port, floor_port = free_port(), free_port()
    config = work / f"api-{clients}.conf"
    config.write_text(f"[database]\npath = {db}\n[api]\nport = {port}\ncache_mb = 0\n")
    api = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_api", "serve", "--config", str(config)],
        stderr=(work / f"api-{clients}.log").open("wb"),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_listening(port)
        real = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        _, body = get(real)  # the first scrape compiles the statements
        floor_server(floor_port, body)
        wait_listening(floor_port)
        floor = http.client.HTTPConnection("127.0.0.1", floor_port, timeout=60)
        real_ms, floor_ms = [], []
        for _ in range(repeat):
            real_ms.append(get(real)[0])
            floor_ms.append(get(floor)[0])
        r, f = statistics.median(real_ms), statistics.median(floor_ms)
        print(
            f"{clients:>7d} clients  {len(body):>9d} bytes  floor {f:7.2f} ms  "
            f"ovpnmon {r:8.2f} ms  {r / f:6.1f}x"
        )
    finally:
        api.terminate()
        api.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clients", type=int, nargs="*", default=[1000, 10_000])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ovpnmon-metrics-bench-") as work:
        print(f"one /metrics scrape, median of {args.repeat}, API response cache off")
        for clients in args.clients:
            measure(Path(work), clients, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
