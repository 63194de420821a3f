"""What the benchmarks share: a free loopback port, waiting for a server to listen, timing one
request, a percentile, timing servers against the floor of their own bodies precomputed, a
Prometheus serving backfilled OpenMetrics, the API serving with its clock stopped, and a
process's resident memory."""

from __future__ import annotations

import http.client
import multiprocessing
import socket
import statistics
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, timeout: float = 60) -> None:
    """Until something accepts connections on 127.0.0.1:``port``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def fetch(conn: http.client.HTTPConnection, url: str) -> tuple[int, bytes, float]:
    """GET ``url`` on ``conn``: (status, body, seconds)."""
    started = time.perf_counter()
    conn.request("GET", url)
    response = conn.getresponse()
    body = response.read()
    return response.status, body, time.perf_counter() - started


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


def floor_server(bodies: dict[str, bytes], port: int, types: dict[str, str] | None = None) -> None:
    """Run in a child process: waitress + Falcon answering each URL (path and query) with its
    precomputed body (as JSON unless ``types`` names another content type)."""
    import falcon
    import waitress

    types = types or {}

    def sink(req: falcon.Request, resp: falcon.Response) -> None:
        key = req.path + (f"?{req.query_string}" if req.query_string else "")
        resp.data = bodies[key]
        resp.content_type = types.get(key, falcon.MEDIA_JSON)

    app = falcon.App()
    app.add_sink(sink, prefix="/")
    waitress.serve(app, host="127.0.0.1", port=port, threads=4, _quiet=True)


def precompute(conn: http.client.HTTPConnection, urls: list[str]) -> dict[str, bytes]:
    """The body ``conn``'s server answers for each URL; exits on any status but 200."""
    bodies = {}
    for url in urls:
        status, body, _ = fetch(conn, url)
        if status != 200:
            raise SystemExit(f"{url}: {status} {body[:300]!r}")
        bodies[url] = body
    return bodies


@contextmanager
def floor(
    bodies: dict[str, bytes], types: dict[str, str] | None = None
) -> Iterator[http.client.HTTPConnection]:
    """A keep-alive connection to a ``floor_server`` child process answering with ``bodies``,
    for the ``with`` block."""
    port = free_port()
    child = multiprocessing.Process(target=floor_server, args=(bodies, port, types), daemon=True)
    child.start()
    try:
        wait_listening(port)
        yield http.client.HTTPConnection("127.0.0.1", port)
    finally:
        child.terminate()


def against_floor(
    bodies: dict[str, bytes],
    servers: list[tuple[str, http.client.HTTPConnection]],
    requests: int,
    width: int,
    types: dict[str, str] | None = None,
) -> None:
    """Time each URL of ``bodies`` on the floor (``floor_server`` answering with ``bodies``) and
    on each of ``servers`` (label, connection), ``requests`` times, interleaved so that all see
    the same machine; print bytes, the floor's p50/p99 and each server's with its p50 ratio."""
    with floor(bodies, types) as base:
        heads = "".join(f" {label + ' p50/p99':>16s} {'ratio':>6s}" for label, _ in servers)
        print(f"{'request':{width}s} {'bytes':>8s} {'floor p50/p99':>14s}{heads}   (ms)")
        for url, body in bodies.items():
            floor_ms: list[float] = []
            timed: list[list[float]] = [[] for _ in servers]
            for _ in range(requests):
                floor_ms.append(fetch(base, url)[2] * 1000)
                for (_, conn), times in zip(servers, timed, strict=True):
                    times.append(fetch(conn, url)[2] * 1000)
            p50 = statistics.median(floor_ms)
            shown = url[7:] if len(url) - 7 <= width else url[7 : 7 + width - 1] + "…"
            cells = "".join(
                f" {statistics.median(t):7.2f}/{percentile(t, 0.99):8.2f}"
                f" {statistics.median(t) / p50:5.1f}x"
                for t in timed
            )
            print(
                f"{shown:{width}s} {len(body):8d} {p50:6.2f}/{percentile(floor_ms, 0.99):7.2f}{cells}"
            )


def prometheus_serving(
    files: list[Path], data: Path, children: list[subprocess.Popen[bytes]]
) -> tuple[int, subprocess.Popen[bytes]]:
    """Prometheus (Debian's) serving the samples of ``files`` (OpenMetrics, each within one
    2-hour block: promtool reads its whole input once per block), turned into blocks in
    ``data`` by ``promtool tsdb create-blocks-from openmetrics`` (each file deleted once read),
    and compacted as a long-running server would have: (its port, its process), added to
    ``children``."""
    started = time.perf_counter()
    for path in files:
        subprocess.run(
            ["promtool", "tsdb", "create-blocks-from", "openmetrics", str(path), str(data)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        path.unlink()
    print(
        f"Prometheus: {len(files)} blocks built by promtool in {time.perf_counter() - started:.0f} s"
    )
    port = free_port()
    config = data.parent / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 1h\nscrape_configs: []\n")
    child = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={config}",
            f"--storage.tsdb.path={data}",
            "--storage.tsdb.retention.time=100y",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=open(data.parent / "prometheus.log", "wb"),  # noqa: SIM115
    )
    children.append(child)
    wait_listening(port, timeout=120)
    while fetch(http.client.HTTPConnection("127.0.0.1", port), "/-/ready")[0] != 200:
        time.sleep(0.5)
    # the compactor runs every minute: wait until three looks find the block count unchanged
    started = time.perf_counter()
    counts: list[int] = []
    while len(counts) < 3 or len(set(counts[-3:])) > 1:
        time.sleep(35)
        counts.append(sum(1 for p in data.iterdir() if len(p.name) == 26))  # ULID-named blocks
        if time.perf_counter() - started > 900:
            break
    print(
        f"Prometheus compacted them into {counts[-1]} blocks in "
        f"{time.perf_counter() - started:.0f} s"
    )
    return port, child


def serve_frozen(config: str, now: float, port: int) -> None:
    """Run in a child process: the API's app (as ``ovpnmon-api serve`` builds it) under
    waitress, its clock stopped at ``now``."""
    import waitress

    from ovpnmon_api.app import create_app, tune_garbage_collector
    from ovpnmon_common.config import load_config

    app = create_app(load_config(config), clock=lambda: now)
    tune_garbage_collector()
    waitress.serve(app, host="127.0.0.1", port=port, threads=4, _quiet=True)


def rss_mb(pid: int | None) -> float:
    """Resident memory of process ``pid`` now (VmRSS), in MB (NaN: no such process)."""
    if pid is None:
        return float("nan")
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
