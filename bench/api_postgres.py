"""The API's headline calls on PostgreSQL against the same data on SQLite, cold and cached.

The SQLite database given (from ``bench/generate.py``) is copied into a PostgreSQL cluster of
its own (``ovpnmon-collector copy-to``: the same rows); several ``--db`` are several hosts of one
fleet (each copied under its own ``--host``, into PostgreSQL and into one SQLite file alike).
Then four ``ovpnmon-api`` serve them —
SQLite and PostgreSQL, each cold (``cache_mb = 0``: every request computed) and as shipped
(cached while the database does not change) — and the floor (the same waitress + Falcon
answering with the precomputed body). Requests interleaved, one keep-alive connection each;
every answer is checked equal on both engines first.

    python bench/generate.py --clients 1000 --raw-days 1 --interval 60 --history-days 70 \\
        --out /tmp/usage-bench.db
    python bench/api_postgres.py --db /tmp/usage-bench.db [--requests 40]

    # 1,000 clients over 3 hosts, half of them on two:
    for first in 0 250 500; do python bench/generate.py --clients 500 --first $first \\
        --seed $first --raw-days 1 --interval 60 --history-days 70 --out /tmp/host-$first.db; done
    python bench/api_postgres.py --db /tmp/host-0.db --db /tmp/host-250.db --db /tmp/host-500.db
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchutil import against_floor, fetch, free_port, precompute, wait_listening

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # pg_harness
import pg_harness


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, action="append", help="once per host")
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    why = pg_harness.unavailable()
    if why:
        raise SystemExit(why)
    work = Path(tempfile.mkdtemp(prefix="ovpnmon-api-pg-"))
    cluster = pg_harness.Cluster()
    children: list[subprocess.Popen[bytes]] = []
    try:
        sqlite = str(work / "bench.db")
        url = cluster.database()
        started = time.perf_counter()
        if len(args.db) == 1:
            shutil.copy(args.db[0], sqlite)
            commands = [["init-db", "--db", sqlite], ["copy-to", url, "--db", sqlite]]
        else:  # a fleet: each host's file into both, under its own name
            commands = []
            for number, path in enumerate(args.db, 1):
                host = str(work / f"host{number}.db")
                shutil.copy(path, host)
                commands.append(["init-db", "--db", host])
                for target in (sqlite, url):
                    commands.append(["copy-to", target, "--db", host, "--host", f"vpn{number}"])
        for command in commands:
            subprocess.run(
                [sys.executable, "-m", "ovpnmon_collector", *command],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        print(
            f"{len(args.db)} host(s) copied into both engines in "
            f"{time.perf_counter() - started:.0f} s"
        )
        servers = {}
        log = open(work / "api.log", "wb")  # noqa: SIM115
        for label, database, extra in (
            ("sqlite cold", f"path = {sqlite}", "cache_mb = 0\n"),
            ("pg cold", f"url = {url}", "cache_mb = 0\n"),
            ("sqlite cached", f"path = {sqlite}", ""),
            ("pg cached", f"url = {url}", ""),
        ):
            port = free_port()
            config = work / f"{port}.conf"
            config.write_text(
                f"[database]\n{database}\n[retention]\nraw_days = 3\nhourly_days = 400\n"
                f"[api]\nthreads = 4\nport = {port}\n{extra}"
            )
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", "ovpnmon_api", "serve", "--config", str(config)],
                    stderr=log,
                )
            )
            wait_listening(port)
            servers[label] = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        _, body, _ = fetch(servers["sqlite cold"], "/api/v1/clients")
        name = json.loads(body)["data"][0]["common_name"]
        month = time.strftime("%Y-%m", time.gmtime(time.time() - 32 * 86400))
        urls = [
            "/api/v1/stats",
            f"/api/v1/stats/{name}?range=24h",
            f"/api/v1/stats/{name}?range=30d",
            "/api/v1/analytics?range=24h",
            "/api/v1/analytics?range=30d",
            "/api/v1/stats/system",
            "/api/v1/clients",
            f"/api/v1/usage?period={month}",
            "/api/v1/sessions",
        ]
        if len(args.db) > 1:  # one host of the fleet
            urls += [
                "/api/v1/stats?host=vpn2",
                f"/api/v1/stats/{name}?range=24h&host=vpn2",
                "/api/v1/analytics?range=24h&host=vpn2",
                "/api/v1/hosts",
            ]
        bodies = precompute(servers["sqlite cold"], urls)
        same = precompute(servers["pg cold"], urls)
        for url_ in urls:  # the same answers (but the moment of the request)
            ours, theirs = json.loads(bodies[url_]), json.loads(same[url_])
            for body in (ours, theirs):
                body.pop("timestamp", None)
                if url_ == "/api/v1/hosts":  # "last stored a poll N s ago": N moves on
                    for entry in body["data"]:
                        entry.pop("reason")
                if url_.startswith("/api/v1/sessions") and len(args.db) > 1:
                    # several hosts copied one after the other: PostgreSQL's sequences leave a
                    # gap between them (copy-to never moves one back), SQLite's ids do not
                    body.pop("next_cursor", None)
                    for entry in body["data"]:
                        entry.pop("id")
            assert ours == theirs, f"{url_}: SQLite and PostgreSQL answer differently"
        print(f"{len(urls)} URLs answered the same on both engines\n")
        against_floor(bodies, list(servers.items()), args.requests, width=34)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            child.wait(timeout=60)
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
