"""ovpnmon against an exporter plus Prometheus, on the same data, the same questions, one run.

The data is ``ovpnmon_demo.world.Dataset``: N clients of four classes with a day/night rhythm,
reconnecting, OpenVPN restarting once a day, the collector and the exporter down for 20 minutes
once a day; bytes move only at poll instants, so the polls show the whole truth, and
``world.Reference`` computes it, apart from ovpnmon's code.

- **ovpnmon** gets every poll through the collector's own path (the status file written, the
  real ``Collector`` polling it, clock injected; in a child process, ``polling.poll_in_child``,
  while this one steps the world), the tiers rolled up (and the raw samples of final buckets
  packed) as each 15-minute bucket closes, as the daemon does. Its
  API serves the file with the clock frozen at the dataset's end (the app ``ovpnmon-api serve``
  runs, under waitress), cold (``cache_mb = 0``: every request computed) and as shipped.
- **Prometheus** (Debian's) gets what an OpenVPN exporter shows at the same instants: per
  session, ``openvpn_client_{received,sent}_bytes_total{common_name, connection_time}``, as
  OpenMetrics turned into blocks by ``promtool tsdb create-blocks-from openmetrics``, served
  once its compactor has settled.

The questions, each checked against the reference, then timed with the systems taking turns on
one keep-alive connection each: one client's 24 h in 15-minute buckets (``/stats/<cn>``;
Prometheus one direction, and both), the whole server's 96 buckets over 24 h / 7 d / 30 d
(``/analytics``; ``sum(increase(...))`` evaluated one second before each bucket's end, so that
its window holds the same polls as ovpnmon's bucket), and the top 10 clients of 24 h
(``topk``). Then disk per sample (one counter value of one session at one poll: what Prometheus
stores as a sample) and each server's resident memory.

    python bench/vs_prometheus.py --clients 1000 --days 3     # the issue's dataset
    python bench/vs_prometheus.py --clients 10000 --days 3
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchutil import (
    fetch,
    free_port,
    percentile,
    prometheus_serving,
    rss_mb,
    serve_frozen,
    wait_listening,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ovpnmon_demo: not installed

from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_common.formatting import parse_timestamp
from ovpnmon_common.planner import ANALYTICS, Series, bucketed, plan
from ovpnmon_common.tiers import GLOBAL_15MIN
from ovpnmon_demo.polling import closing_buckets, poll_in_child
from ovpnmon_demo.simulator import render_status
from ovpnmon_demo.world import BUCKET, DAY, Dataset, Reference

RECEIVED, SENT = "openvpn_client_received_bytes_total", "openvpn_client_sent_bytes_total"
BLOCK = 2 * 3600  # promtool reads its whole input once per 2-hour block: one file per block


class OpenMetrics:
    """The exporter's view, one OpenMetrics file per 2-hour block (each series' samples
    together, in time order, as the format wants)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.files: list[Path] = []
        self._block: int | None = None
        self._series: dict[tuple[str, int], list[tuple[int, int, int]]] = defaultdict(list)

    def scrape(self, now: int, rows: list[SessionRow]) -> None:
        block = now - now % BLOCK
        if block != self._block:
            self.flush()
            self._block = block
        for row in rows:
            self._series[(row.common_name, row.connected_since)].append(
                (now, row.bytes_received, row.bytes_sent)
            )

    def flush(self) -> None:
        if not self._series:
            return
        path = self.work / f"block-{self._block}.om"
        with open(path, "w") as f:
            for index, metric in enumerate((RECEIVED, SENT)):
                f.write(f"# TYPE {metric[: -len('_total')]} counter\n")
                for (name, since), samples in self._series.items():
                    labels = f'{metric}{{common_name="{name}",connection_time="{since}"}}'
                    f.writelines(f"{labels} {s[1 + index]} {s[0]}\n" for s in samples)
            f.write("# EOF\n")
        self.files.append(path)
        self._series = defaultdict(list)


def load(dataset: Dataset, work: Path) -> tuple[str, Reference, list[Path], dict[str, float]]:
    """Every poll into ovpnmon, the reference and the exporter's OpenMetrics; the tiers rolled
    up. This process steps the world, renders its status text and keeps the reference and the
    exporter's series while a child process polls, rolls up and packs
    (``ovpnmon_demo.polling.poll_in_child``). Returns (database, reference, files, timings)."""
    from ovpnmon_collector import pack, rollup
    from ovpnmon_common.storage import engines, migrations

    database, status = str(work / "ovpnmon.db"), str(work / "openvpn-status.log")
    engine = engines.writer_engine(database)
    migrations.init_db(engine)
    engines.close_writer(engine)  # the polling process opens its own
    reference, exporter = Reference(), OpenMetrics(work)
    timings: dict[str, float] = defaultdict(float)

    def texts() -> Iterator[tuple[int, str]]:
        for now, rows in dataset.polls():
            started = time.perf_counter()
            reference.poll(now, rows)
            exporter.scrape(now, rows)
            timings["reference and OpenMetrics"] += time.perf_counter() - started
            yield now, render_status(rows, now)

    started = time.perf_counter()
    took = poll_in_child(database, status, dataset.interval, texts(), closing_buckets())
    timings["loading"] = time.perf_counter() - started
    timings["of which the collector's polls"] = took["polls"]
    timings["rollups and packing"] = took["after"]
    timings["the world waiting for the collector"] = took["waited"]
    exporter.flush()
    started = time.perf_counter()
    engine = engines.writer_engine(database)
    # The daemon's rollup job runs every minute (its last run a minute before "now", at worst),
    # and it sums the bucket in progress after every poll (``rollup.sum_recent``): readers take
    # no raw sample after the last poll's.
    rollup.catch_up(engine, dataset.end - 60)
    rollup.sum_recent(engine, dataset.end - 1)
    pack.catch_up(engine)
    timings["last rollup"] = time.perf_counter() - started
    engines.close_writer(engine)
    os.unlink(status)
    return database, reference, exporter.files, timings


def both(expression: str) -> str:
    """``expression`` (with ``{metric}``) for both directions in one query, told apart by a
    ``d`` label (``increase`` drops the metric's name)."""
    return " or ".join(
        f'label_replace({expression.replace("{metric}", metric)}, "d", "{d}", "", "")'
        for metric, d in ((RECEIVED, "rx"), (SENT, "tx"))
    )


def prometheus_points(body: bytes) -> dict[str, dict[int, float]]:
    """A query_range answer as direction (``d`` label, or "") -> evaluation time -> value."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for result in json.loads(body)["data"]["result"]:
        d = result["metric"].get("d", "")
        for at, value in result["values"]:
            out[d][int(at)] = float(value)
    return out


def accuracy(got: list[float], want: list[int]) -> str:
    """How close ``got`` is to the reference ``want``, point by point: the points where a
    byte moved that are exact, and the error summed over every point."""
    moved = [(g, w) for g, w in zip(got, want, strict=True) if w]
    exact = sum(1 for g, w in moved if round(g) == w)
    error = sum(abs(g - w) for g, w in zip(got, want, strict=True))
    total = sum(want) or 1
    return (
        f"{exact} of the {len(moved)} points where bytes moved exact, "
        f"error {100 * error / total:.3f} % of the bytes"
    )


@dataclass
class Question:
    label: str
    ours: str  # ovpnmon URL ("": ovpnmon has no such question of its own)
    theirs: str  # Prometheus URL
    reference: Any  # bucket -> [rx, tx], or the top list
    series: Series | None = None  # the buckets asked about (None: the top list)
    checks: list[tuple[str, str]] = field(default_factory=list)  # (system, accuracy)


def questions(dataset: Dataset, reference: Reference, name: str) -> list[Question]:
    """The questions asked of both systems, each with the reference's answer."""
    from ovpnmon_common.config import RetentionConfig

    now = dataset.end
    series = plan("24h", None, now, RetentionConfig())
    mine = reference.client(name, series.start, series.end, BUCKET)
    selector = f'{{common_name="{name}"}}'
    one = f"sum(increase({RECEIVED}{selector}[15m]))"
    both_ = "sum by (d) (" + both("increase({metric}" + selector + "[15m])") + ")"
    found = [
        Question("one client, 24 h, one direction", "", evaluated(one, series), mine, series),
        Question(
            "one client, 24 h, both directions",
            f"/api/v1/stats/{name}?range=24h",
            evaluated(both_, series),
            mine,
            series,
        ),
    ]
    for range_name, step in ANALYTICS.items():
        planned = bucketed(range_name, GLOBAL_15MIN, step, now)
        query = "sum by (d) (" + both("increase({metric}[" + str(step) + "s])") + ")"
        found.append(
            Question(
                f"whole server, {range_name}, 96 buckets",
                f"/api/v1/analytics?range={range_name}",
                evaluated(query, planned),
                reference.server(planned.start, planned.end, step),
                planned,
            )
        )
    planned = bucketed("24h", GLOBAL_15MIN, ANALYTICS["24h"], now)
    seconds = planned.end - planned.start
    total = (
        f"sum by (common_name) (increase({RECEIVED}[{seconds}s]))"
        f" + sum by (common_name) (increase({SENT}[{seconds}s]))"
    )
    params = {"query": f"topk(10, {total})", "time": planned.end - 1}
    found.append(
        Question(
            "top 10 clients, 24 h",
            "/api/v1/analytics?range=24h",
            "/api/v1/query?" + urllib.parse.urlencode(params),
            reference.top(planned.start, planned.end),
        )
    )
    return found


def evaluated(query: str, series: Series) -> str:
    """``query`` over the buckets of ``series``, evaluated one second before each bucket's
    end, so that the window ``(t - step, t]`` holds the polls of ovpnmon's bucket."""
    assert series.step is not None
    params = {
        "query": query,
        "start": series.start + series.step - 1,
        "end": series.end - 1,
        "step": series.step,
    }
    return "/api/v1/query_range?" + urllib.parse.urlencode(params)


def check(question: Question, ours: bytes, theirs: bytes) -> None:
    """Fill ``question.checks``: each system's answer against the reference."""
    if question.series is None:
        check_top(question, ours, theirs)
        return
    series, want = question.series, question.reference
    assert series.step is not None
    starts = list(series.starts())
    want_rx = [want.get(s, [0, 0])[0] for s in starts]
    want_tx = [want.get(s, [0, 0])[1] for s in starts]
    if ours:
        data = json.loads(ours)["data"]
        if "global_history_24h" in data:
            points = data["global_history_24h"]
            keys = ("total_rx", "total_tx")
        else:
            points = data["history"]
            keys = ("bytes_received", "bytes_sent")
        got = {parse_timestamp(p["timestamp"]): (p[keys[0]], p[keys[1]]) for p in points}
        mine = [float(got.get(s, (0, 0))[0]) for s in starts]
        mine += [float(got.get(s, (0, 0))[1]) for s in starts]
        question.checks.append(("ovpnmon", accuracy(mine, want_rx + want_tx)))
    answer = prometheus_points(theirs)
    step = series.step
    if "" in answer:  # one direction
        got_rx = [answer[""].get(s + step - 1, 0.0) for s in starts]
        question.checks.append(("Prometheus", accuracy(got_rx, want_rx)))
        return
    got_both = [answer["rx"].get(s + step - 1, 0.0) for s in starts]
    got_both += [answer["tx"].get(s + step - 1, 0.0) for s in starts]
    question.checks.append(("Prometheus", accuracy(got_both, want_rx + want_tx)))


def check_top(question: Question, ours: bytes, theirs: bytes) -> None:
    """``check`` for the top list: the same clients, in order, with the same bytes."""
    want = question.reference
    mine = json.loads(ours)["data"]["top_clients_24h"]
    exact = [(e["common_name"], e["total"]) for e in mine] == want
    question.checks.append(("ovpnmon", "the same 10, bytes exact" if exact else "DIFFERS"))
    result = json.loads(theirs)["data"]["result"]
    got = {r["metric"]["common_name"]: float(r["value"][1]) for r in result}
    same = sum(1 for name, _ in want if name in got)
    error = sum(abs(got.get(n, 0) - v) for n, v in want) / (sum(v for _, v in want) or 1)
    question.checks.append(
        ("Prometheus", f"{same}/10 of the same clients, error {100 * error:.3f} % of the bytes")
    )


SYSTEMS = ("Prometheus", "ovpnmon cold", "ovpnmon cached")


def ask(question: Question, conns: dict[str, http.client.HTTPConnection], requests: int) -> None:
    """Check each system's answer to ``question``, then time it ``requests`` times, the
    systems taking turns; print a row of p50/p90/p99 and the checks."""
    ours = fetch(conns["ovpnmon cold"], question.ours)[1] if question.ours else b""
    check(question, ours, fetch(conns["Prometheus"], question.theirs)[1])
    timed: dict[str, list[float]] = defaultdict(list)
    for _ in range(requests):
        status, body, seconds = fetch(conns["Prometheus"], question.theirs)
        assert status == 200, body[:300]
        timed["Prometheus"].append(seconds * 1000)
        for label in SYSTEMS[1:] if question.ours else ():
            status, body, seconds = fetch(conns[label], question.ours)
            assert status == 200, body[:300]
            timed[label].append(seconds * 1000)
    cells = [
        f"{statistics.median(t):6.1f}/{percentile(t, 0.9):6.1f}/{percentile(t, 0.99):6.1f}"
        if (t := timed.get(label))
        else "—"
        for label in SYSTEMS
    ]
    ratio = ""
    if question.ours:
        ratio = f"{statistics.median(timed['ovpnmon cold']) / statistics.median(timed['Prometheus']):8.3f}"
    print(f"{question.label:42s}" + "".join(f" {c:>22s}" for c in cells) + f"  {ratio}")
    for system, verdict in question.checks:
        print(f"    {system}: {verdict}")


def du(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--days", type=float, default=3)
    parser.add_argument("--interval", type=int, default=10)
    parser.add_argument("--requests", type=int, default=30)
    parser.add_argument("--seed", type=int, default=19)
    args = parser.parse_args()
    for tool in ("prometheus", "promtool"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed (Debian: apt-get install prometheus)")
    work = Path(tempfile.mkdtemp(prefix="ovpnmon-vs-prometheus-"))
    children: list[subprocess.Popen[bytes]] = []
    servers: list[multiprocessing.process.BaseProcess] = []
    try:
        end = int(time.time()) // BUCKET * BUCKET + BUCKET // 2  # mid-bucket, as a real "now"
        start = end - int(args.days * DAY)
        dataset = Dataset(args.clients, start, end, args.interval, args.seed)
        print(
            f"dataset: {args.clients} clients, {args.days:g} days at {args.interval} s, "
            f"{len(dataset.restarts)} OpenVPN restarts, {len(dataset.gaps)} gaps of 20 min"
        )
        started = time.perf_counter()
        database, reference, files, timings = load(dataset, work)
        print(
            f"loaded in {time.perf_counter() - started:.0f} s ("
            + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
            + f"); {reference.samples:,} counter values"
        )
        prometheus_port, prometheus = prometheus_serving(files, work / "prometheus", children)
        ovpnmon_bytes = sum(
            du(Path(database + s)) for s in ("", "-wal") if Path(database + s).exists()
        )
        conns = {
            "Prometheus": http.client.HTTPConnection("127.0.0.1", prometheus_port, timeout=600)
        }
        for label, extra in (("ovpnmon cold", "cache_mb = 0\n"), ("ovpnmon cached", "")):
            config = work / f"{label.split()[1]}.conf"
            config.write_text(
                f"[database]\npath = {database}\n[retention]\nraw_days = 30\n"
                f"[api]\nthreads = 4\n{extra}"
            )
            port = free_port()
            # spawned, not forked: a fork would share (and count in its resident memory) this
            # process's dataset and reference
            server = multiprocessing.get_context("spawn").Process(
                target=serve_frozen, args=(str(config), float(end), port), daemon=True
            )
            server.start()
            servers.append(server)
            wait_listening(port)
            conns[label] = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
        busiest = max(
            (p.name for p in dataset.people if p.kind.name == "office"),
            key=lambda n: sum(rx + tx for rx, tx in reference.buckets[n].values()),
        )
        asked = questions(dataset, reference, busiest)
        print(f"\nthe one client: {busiest} (office hours, the busiest of its class)\n")
        print(
            f"{'question (p50/p90/p99 ms)':42s}"
            + "".join(f" {label:>22s}" for label in SYSTEMS)
            + "  cold ÷ Prometheus"
        )
        for question in asked:
            ask(question, conns, args.requests)
        prometheus_bytes = du(work / "prometheus")
        print(
            f"\ndisk per counter value ({reference.samples:,}): Prometheus "
            f"{prometheus_bytes / reference.samples:.2f} B ({prometheus_bytes / 1e6:.0f} MB), "
            f"ovpnmon {ovpnmon_bytes / reference.samples:.2f} B ({ovpnmon_bytes / 1e6:.0f} MB), "
            f"{ovpnmon_bytes / prometheus_bytes:.2f}x"
        )
        print(
            f"resident memory: Prometheus {rss_mb(prometheus.pid):.0f} MB, ovpnmon API cold "
            f"{rss_mb(servers[0].pid):.0f} MB, cached {rss_mb(servers[1].pid):.0f} MB"
        )
    finally:
        for server in servers:
            server.terminate()
        for child in children:
            child.terminate()
            child.wait(timeout=60)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
