"""One ``/metrics`` scrape at 1,000 and 10,000 clients against the floor of the same waitress
serving the same body precomputed, measured in the same run.

    .venv/bin/python bench/metrics_scrape.py            # 1,000 and 10,000 clients
    .venv/bin/python bench/metrics_scrape.py --clients 2000

Each database is written by the collector's own code (polls of one session per client, every
counter moving); scrapes go over HTTP on one keep-alive connection, real and floor alternating,
median of --repeat. Three cases: "steady" (no poll since the last scrape), "after a poll" (a
poll, then a scrape a second later, as Prometheus scrapes at its own pace: the API's warmer has
read the new state; against the floor after the same idle second), and "cold" (the scrape sent
the moment the poll committed: it waits for the warmer's read or does it).
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


class Polled:
    """A database of ``clients`` clients, written by the collector's own code, one poll a call."""

    def __init__(self, work: Path, clients: int) -> None:
        self.clients = clients
        self.path = work / f"metrics-{clients}.db"
        self.engine = engines.writer_engine(str(self.path))
        migrations.init_db(self.engine)
        self.status = work / f"status-{clients}.log"
        self.clock = ManualClock(T0, T0)
        self.collector = Collector(
            Store(self.engine),
            [StatusFileSource("udp", str(self.status), settle=0)],
            clock=self.clock,
        )
        self.step = 0

    def poll(self) -> None:
        rows = [
            SessionRow(
                f"client-{i:05d}",
                f"127.0.{i // 250}.{i % 250 + 1}:{40000 + i % 20000}",
                f"10.8.{i // 250}.{i % 250 + 2}",
                "",
                self.step * 1000 * (i + 1),
                self.step * 100 * (i + 1),
                T0 - 30,
                i,
            )
            for i in range(self.clients)
        ]
        write_in_place(str(self.status), render_status(rows, int(self.clock.wall)))
        assert self.collector.poll().stored
        self.clock.advance(10)
        self.step += 1


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
    polled = Polled(work, clients)
    polled.poll()
    polled.poll()
    port, floor_port = free_port(), free_port()
    config = work / f"api-{clients}.conf"
    config.write_text(f"[database]\npath = {polled.path}\n[api]\nport = {port}\ncache_mb = 0\n")
    api = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_api", "serve", "--config", str(config)],
        stderr=(work / f"api-{clients}.log").open("wb"),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        wait_listening(port)
        real = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        _, body = get(real)  # the first scrape compiles the statements and starts the warmer
        floor_server(floor_port, body)
        wait_listening(floor_port)
        floor = http.client.HTTPConnection("127.0.0.1", floor_port, timeout=60)
        steady, after, cold, floor_ms, floor_idle = [], [], [], [], []
        for _ in range(repeat):
            steady.append(get(real)[0])
            floor_ms.append(get(floor)[0])
        for _ in range(repeat):
            polled.poll()
            time.sleep(1)  # Prometheus scrapes at its own pace; both sides idle as long
            after.append(get(real)[0])
            time.sleep(1)
            floor_idle.append(get(floor)[0])
            polled.poll()
            cold.append(get(real)[0])
        f, fi = statistics.median(floor_ms), statistics.median(floor_idle)
        figures = "  ".join(
            f"{name} {statistics.median(ms):7.2f} ms {statistics.median(ms) / base:5.1f}x"
            for name, ms, base in (
                ("steady", steady, f),
                ("after a poll", after, fi),
                ("cold", cold, f),
            )
        )
        print(
            f"{clients:>7d} clients  {len(body):>9d} bytes  floor {f:6.2f} ms "
            f"(idle first {fi:6.2f} ms)  {figures}"
        )
    finally:
        api.terminate()
        api.wait(timeout=30)
        engines.close_writer(polled.engine)


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
