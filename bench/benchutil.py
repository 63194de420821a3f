"""What the benchmarks share: a free loopback port, waiting for a server to listen, timing one
request, a percentile, and the floor server of precomputed bodies."""

from __future__ import annotations

import http.client
import socket
import time


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
