"""``/usage`` for last month and pages of ``/sessions``, cold, against the floor of the same
waitress + Falcon serving the precomputed body; and Prometheus answering the same month's
per-client totals from the same data (``increase(...[month])`` at the month's end).

    python bench/generate.py --clients 1000 --raw-days 1 --interval 60 --history-days 70 \\
        --out /tmp/usage-bench.db
    python bench/usage_sessions.py --db /tmp/usage-bench.db [--requests 40] [--no-prometheus]

The database is copied, upgraded (``init-db``) and pruned (``raw_days = 1``) by the collector's
CLI first, as on a host, so last month is answered from the tiers. Three servers answer the same
URLs, requests interleaved on one keep-alive connection each: the floor, ovpnmon-api with
``cache_mb = 0`` ("cold": every request computed) and ovpnmon-api as shipped (cached while the
database does not change). Then the collector polls the same database (a simulated status file of
the same clients) and each URL is asked a second after a commit ("after a poll": the shipped API's
warmer has answered it again meanwhile) and, one URL a round, the moment a poll commits.

Prometheus gets the month as OpenMetrics written from ``stats_hourly``: each client's two
counters (its lifetime received/sent before each instant, as ``/metrics`` exports them) every
``--prometheus-step`` seconds, the hour's bytes spread evenly inside each hour; the blocks are
built with ``promtool tsdb create-blocks-from openmetrics``. Samples fall exactly on the month's
edges, so ``increase()`` needs no extrapolation and equals the month's bytes: the bench checks
that it agrees with ``/usage`` for every client. A real Prometheus scrapes off the edges and
extrapolates; its answer is then close, not exact. The comparison is of the time to answer.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import defaultdict
from pathlib import Path

from benchutil import (
    against_floor,
    fetch,
    floor,
    free_port,
    percentile,
    precompute,
    prometheus_serving,
    wait_listening,
)
from sqlalchemy import func, select

from ovpnmon_common import schema
from ovpnmon_common.buckets import HOUR
from ovpnmon_common.periods import Period, month_of
from ovpnmon_common.storage import engines

CSV = "text/csv; charset=utf-8; header=present"
COUNTERS = ("ovpnmon_client_received_bytes_total", "ovpnmon_client_sent_bytes_total")


def last_month(now: int) -> Period:
    return month_of(month_of(now, "UTC").start - 1, "UTC")


BLOCK = 2 * HOUR  # promtool's block range: it reads its whole input once per block


def write_openmetrics(database: str, month: Period, step: int, work: Path) -> list[Path]:
    """The month's counters of every client as OpenMetrics text, one file per 2-hour block
    (so that promtool parses each sample once); returns the files."""
    engine = engines.reader_engine(database)
    h, c = schema.stats_hourly, schema.clients
    per_client: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.c.common_name, h.c.bucket, h.c.bytes_received, h.c.bytes_sent)
            .join(c, c.c.id == h.c.client_id)
            .where(h.c.bucket < month.end)
            .order_by(c.c.common_name, h.c.bucket)
        )
        for name, bucket, rx, tx in rows:
            per_client[name].append((bucket, rx, tx))
    engine.dispose()
    times = range(month.start, month.end + 1, step)
    # series -> its values at ``times``
    values: dict[tuple[str, str], list[int]] = {}
    for index, metric in enumerate(COUNTERS):
        for name, buckets in per_client.items():
            hourly = {bucket: (rx, tx)[index] for bucket, rx, tx in buckets}
            before = sum(v for b, v in hourly.items() if b < month.start)
            counted_to = month.start  # ``before`` holds every hour before this one
            series = []
            for t in times:
                hour = t - t % HOUR
                while counted_to < hour:
                    before += hourly.get(counted_to, 0)
                    counted_to += HOUR
                series.append(before + hourly.get(hour, 0) * (t - hour) // HOUR)
            values[(metric, name)] = series
    files = []
    first = month.start - month.start % BLOCK
    for block in range(first, month.end + 1, BLOCK):
        inside = [(i, t) for i, t in enumerate(times) if block <= t < block + BLOCK]
        if not inside:
            continue
        path = work / f"block-{block}.om"
        with open(path, "w") as f:
            for metric in COUNTERS:
                f.write(f"# TYPE {metric[: -len('_total')]} counter\n")
                for name in per_client:
                    label = json.dumps(name)  # plain ASCII names: JSON quoting is enough
                    series = values[(metric, name)]
                    f.writelines(
                        f"{metric}{{common_name={label}}} {series[i]} {t}\n" for i, t in inside
                    )
            f.write("# EOF\n")
        files.append(path)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--prometheus-step", type=int, default=300)
    parser.add_argument("--no-prometheus", action="store_true")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ovpnmon-usage-bench-"))
    children: list[subprocess.Popen[bytes]] = []
    try:
        database = str(work / "bench.db")
        shutil.copy(args.db, database)
        config = work / "ovpnmon.conf"
        config.write_text(
            f"[database]\npath = {database}\n[retention]\nraw_days = 1\n[api]\nthreads = 4\n"
        )
        for command in ("init-db", "prune"):
            subprocess.run(
                [sys.executable, "-m", "ovpnmon_collector", command, "--config", str(config)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        month = last_month(int(time.time()))
        prometheus = None
        if not args.no_prometheus and shutil.which("prometheus") and shutil.which("promtool"):
            port = start_prometheus(work, database, month, args.prometheus_step, children)
            prometheus = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        cold_port, api_port = free_port(), free_port()
        log = open(work / "api.log", "wb")  # noqa: SIM115
        for port, extra in ((cold_port, "cache_mb = 0\n"), (api_port, "")):
            path = work / f"api-{port}.conf"
            path.write_text(config.read_text() + f"port = {port}\n{extra}")
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ovpnmon_api", "serve", "--config", str(path)],
                    stderr=log,
                )
            )
        wait_listening(cold_port)
        wait_listening(api_port)
        cold = http.client.HTTPConnection("127.0.0.1", cold_port, timeout=120)
        shipped = http.client.HTTPConnection("127.0.0.1", api_port, timeout=120)

        usage_url = f"/api/v1/usage?period={month.name}"
        urls = [usage_url, usage_url + "&format=csv", "/api/v1/usage?period=" + month.name[:5]]
        urls[2] += time.strftime("W%V", time.gmtime(month.start + 3 * 86400))  # a week of it
        urls += ["/api/v1/sessions", "/api/v1/sessions?limit=1000"]
        _, body, _ = fetch(cold, "/api/v1/sessions?limit=1000")
        cursor = json.loads(body)["next_cursor"]
        if cursor is not None:
            urls.append(f"/api/v1/sessions?limit=1000&cursor={urllib.parse.quote(cursor)}")
        urls += ["/api/v1/sessions?common_name=user-000", "/api/v1/sessions?active=yes&limit=1000"]
        bodies = precompute(cold, urls)
        types = {url: CSV for url in urls if "format=csv" in url}
        usage = json.loads(bodies[usage_url])
        with engines.reader_engine(database).connect() as conn:
            sessions = conn.execute(select(func.count()).select_from(schema.sessions)).scalar()
        print(
            f"{usage['count']} clients with traffic in {month.name} (exact: {usage['exact']}), "
            f"{sessions} sessions in the log\n"
        )
        against_floor(
            bodies, [("cold", cold), ("shipped", shipped)], args.requests, width=52, types=types
        )
        after_polls(database, bodies, shipped, cold, args.requests, types)
        if prometheus is not None:
            compare_prometheus(prometheus, month, usage, cold, usage_url, args.requests)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


def after_polls(
    database: str,
    bodies: dict[str, bytes],
    shipped: http.client.HTTPConnection,
    cold: http.client.HTTPConnection,
    rounds: int,
    types: dict[str, str],
) -> None:
    """What a dashboard meets: the collector polls (the real one, on a simulated status file of
    the same 1,000 clients), and a second later every URL is asked, of the floor, the API as
    shipped (its warmer has answered the hot URLs again after the commit) and the cold API;
    then once more at the commit: one URL (each in turn) asked the moment the poll commits."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ovpnmon_demo
    from ovpnmon_collector.collector import Collector
    from ovpnmon_collector.sources import StatusFileSource
    from ovpnmon_collector.store import Store
    from ovpnmon_demo.clock import ManualClock
    from ovpnmon_demo.simulator import Simulation, render_status, write_in_place

    engine = engines.writer_engine(database)
    status = database + ".status"
    simulation = Simulation(clients=1000, seed=42)
    clock = ManualClock(time.time(), time.monotonic())
    collector = Collector(
        Store(engine), [StatusFileSource("sim", status, settle=0)], interval=10, clock=clock
    )

    def poll() -> None:
        now = int(time.time())
        clock.set(now)
        write_in_place(status, render_status(simulation.step(now), now))
        summary = collector.poll()
        assert summary.stored and not summary.failed, summary

    try:
        with floor(bodies, types) as base:
            poll()  # the simulation's first poll replaces the generated sessions: not measured
            times: dict[str, dict[str, list[float]]] = {url: defaultdict(list) for url in bodies}
            urls = list(bodies)
            for i in range(rounds):
                for url in urls:  # make every URL one the dashboard asks
                    fetch(shipped, url)
                poll()
                at_commit = urls[i % len(urls)]
                times[at_commit]["commit"].append(fetch(shipped, at_commit)[2] * 1000)
                poll()
                time.sleep(1.0)
                for url in urls:
                    times[url]["floor"].append(fetch(base, url)[2] * 1000)
                    times[url]["after"].append(fetch(shipped, url)[2] * 1000)
                    times[url]["cold"].append(fetch(cold, url)[2] * 1000)
        print(
            f"\nWith the collector polling ({rounds} rounds): 'after a poll' is the first request "
            "a second after a commit,\n'at the commit' the first request the moment it commits "
            f"({rounds // len(urls)}-{-(-rounds // len(urls))} per URL)\n"
        )
        print(
            f"{'request':52s} {'floor p50':>10s} {'after a poll p50/p99':>21s} {'ratio':>6s}"
            f" {'cold p50':>9s} {'ratio':>6s} {'at the commit p50':>18s}   (ms)"
        )
        for url, t in times.items():
            p50 = statistics.median(t["floor"])
            after, coldest = statistics.median(t["after"]), statistics.median(t["cold"])
            commit = f"{statistics.median(t['commit']):18.2f}" if t["commit"] else ""
            shown = url[7:] if len(url) - 7 <= 52 else url[7:58] + "…"
            print(
                f"{shown:52s} {p50:10.2f} {after:10.2f}/{percentile(t['after'], 0.99):10.2f}"
                f" {after / p50:5.1f}x {coldest:9.2f} {coldest / p50:5.1f}x {commit}"
            )
    finally:
        engines.close_writer(engine)


def start_prometheus(
    work: Path, database: str, month: Period, step: int, children: list[subprocess.Popen[bytes]]
) -> int:
    """Prometheus serving the month (its port), once it has compacted the backfilled blocks as
    a long-running one would have."""
    started = time.perf_counter()
    files = write_openmetrics(database, month, step, work)
    samples = len(range(month.start, month.end + 1, step))
    print(
        f"Prometheus: {samples} samples a series every {step} s, written in "
        f"{time.perf_counter() - started:.0f} s"
    )
    port, _ = prometheus_serving(files, work / "prometheus", children)
    return port


def compare_prometheus(
    prometheus: http.client.HTTPConnection,
    month: Period,
    usage: dict,
    cold: http.client.HTTPConnection,
    usage_url: str,
    requests: int,
) -> None:
    seconds = month.end - month.start
    # increase() drops the metric name: each direction gets a label to tell them apart
    query = " or ".join(
        f'label_replace(increase(ovpnmon_client_{d}_bytes_total[{seconds}s]), "d", "{d}", "", "")'
        for d in ("received", "sent")
    )
    url = "/api/v1/query?" + urllib.parse.urlencode({"query": query, "time": month.end})
    status, body, _ = fetch(prometheus, url)
    if status != 200:
        raise SystemExit(f"Prometheus: {status} {body[:500]!r}")
    answer: dict[str, dict[str, float]] = defaultdict(dict)
    for result in json.loads(body)["data"]["result"]:
        labels = result["metric"]
        answer[labels["common_name"]][labels["d"]] = float(result["value"][1])
    ours = {e["common_name"]: e for e in usage["data"]}
    agree = sum(
        1
        for name, entry in ours.items()
        if round(answer[name].get("received", -1)) == entry["bytes_received"]
        and round(answer[name].get("sent", -1)) == entry["bytes_sent"]
    )
    theirs, mine = [], []
    for _ in range(requests):
        theirs.append(fetch(prometheus, url)[2] * 1000)
        mine.append(fetch(cold, usage_url)[2] * 1000)
    p50 = statistics.median(theirs)
    print(
        f"\nPrometheus increase(...[{(month.end - month.start) // 86400}d]) at the end of "
        f"{month.name}, both counters of every client in one query ({len(body):,} bytes): "
        f"p50 {p50:.2f} ms, p99 {percentile(theirs, 0.99):.2f} ms; ovpnmon cold /usage "
        f"p50 {statistics.median(mine):.2f} ms ({statistics.median(mine) / p50:.2f}x Prometheus)."
        f"\nPrometheus equals /usage for {agree} of {len(ours)} clients."
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
