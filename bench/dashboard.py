"""The dashboard in Debian's Chromium: first load of the overview and the clients table, against a
floor measured in the same run.

The floor is the same page (the same files) served by the same waitress with every API answer it
asks for precomputed: the difference is what ovpnmon's API and the page's own work add. Each
measurement is a fresh browser context (cold cache), real and floor alternating.

    .venv/bin/python bench/dashboard.py --db /tmp/big.db      # a database with 1,000 clients
    .venv/bin/python bench/dashboard.py --db /tmp/big.db --no-cache

Prints, for the overview and the clients page: bytes of the page itself (everything but
/api/v1 JSON), time to the first drawn chart / to the rendered table, median of --repeat, and
the ratio to the floor.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from benchutil import free_port

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "ovpnmon_api" / "dashboard"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(url)


def floor_server(port: int, answers: dict[str, bytes]) -> threading.Thread:
    """waitress serving the dashboard's files and ``answers`` (path with query -> JSON)."""
    import waitress

    from ovpnmon_api.dashboard import CSP, Dashboard

    files = Dashboard().files

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        query = environ.get("QUERY_STRING", "")
        full = path + ("?" + query if query else "")
        if full in answers:
            start_response("200 OK", [("Content-Type", "application/json")])
            return [answers[full]]
        name = "index.html" if path == "/" else path.removeprefix("/dashboard/")
        found = files.get(name)
        if found is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        start_response("200 OK", [("Content-Type", found.type), ("Content-Security-Policy", CSP)])
        return [found.data]

    thread = threading.Thread(
        target=waitress.serve,
        kwargs={"app": app, "host": "127.0.0.1", "port": port, "threads": 4, "_quiet": True},
        daemon=True,
    )
    thread.start()
    return thread


def measure(browser, base: str, route: str, mark: str) -> tuple[int, float, dict[str, bytes]]:
    """(bytes of the page itself, ms to ``mark``, the API answers it got) in a fresh context."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    sizes: list[int] = []
    answers: dict[str, bytes] = {}

    def done(response):
        url = response.url.removeprefix(base)
        body = response.body()
        if url.startswith("/api/v1/"):
            answers[url] = body
        else:
            sizes.append(len(body) + sum(len(k) + len(v) + 4 for k, v in response.headers.items()))

    page.on("response", done)
    page.goto(f"{base}/{route}")
    page.wait_for_function(f"() => window.ovpnmon && window.ovpnmon.marks.{mark}")
    elapsed = page.evaluate(f"window.ovpnmon.marks.{mark}")
    page.wait_for_load_state("networkidle")
    context.close()
    return sum(sizes), float(elapsed), answers


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--db", required=True)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument(
        "--no-cache", action="store_true", help="the API with cache_mb = 0: every answer computed"
    )
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="ovpnmon-dashboard-bench-"))
    port, floor_port = free_port(), free_port()
    config = work / "api.conf"
    cache = "cache_mb = 0\n" if args.no_cache else ""
    config.write_text(f"[database]\npath = {args.db}\n[api]\nport = {port}\n{cache}")
    api = subprocess.Popen(
        [sys.executable, "-m", "ovpnmon_api", "serve", "--config", str(config)],
        stderr=(work / "api.log").open("wb"),
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(f"{base}/api/v1/health")
        clients = len(
            __import__("json").loads(urllib.request.urlopen(f"{base}/api/v1/clients").read())[
                "data"
            ]
        )
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            answers: dict[str, bytes] = {}
            for route, mark in (("#/", "firstChart"), ("#/clients", "clientsTable")):
                answers.update(measure(browser, base, route, mark)[2])
            floor_server(floor_port, answers)
            floor = f"http://127.0.0.1:{floor_port}"
            wait_for(f"{floor}/")
            print(
                f"database {args.db}: {clients} clients; median of {args.repeat}, cold browser "
                f"cache; API response cache {'off' if args.no_cache else 'on (as shipped)'}"
            )
            print(f"{'page':10s} {'bytes':>8s}  {'floor ms':>9s}  {'ovpnmon ms':>10s}  ratio")
            for route, mark, label in (
                ("#/", "firstChart", "overview"),
                ("#/clients", "clientsTable", "clients"),
            ):
                real_ms, floor_ms, sizes = [], [], []
                for _ in range(args.repeat):
                    size, ms, _ = measure(browser, base, route, mark)
                    real_ms.append(ms)
                    sizes.append(size)
                    floor_ms.append(measure(browser, floor, route, mark)[1])
                r, f = statistics.median(real_ms), statistics.median(floor_ms)
                what = "first chart" if mark == "firstChart" else f"table of {clients} rows"
                print(
                    f"{label:10s} {max(sizes):8d}  {f:9.1f}  {r:10.1f}  {r / f:4.2f}x"
                    f"   (time to the {what})"
                )
            browser.close()
    finally:
        api.terminate()
        api.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
