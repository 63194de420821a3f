"""The ovpnmon demo: a simulated OpenVPN, the real collector and the real API on 127.0.0.1.

Run through ``scripts/demo`` (which makes the virtual environment). It

1. seeds 30 days of history for ~25 simulated clients through the collector's own code paths
   (status text in OpenVPN's format, parsed and accounted like a real server's) and rolls it up;
2. keeps rewriting the status file in place every few seconds, as OpenVPN does;
3. runs ``ovpnmon-collector run`` and ``ovpnmon-api serve`` as child processes;
4. stops everything on Ctrl-C (or SIGTERM) and leaves no process behind.

With ``--openvpn`` (root, the ``openvpn`` binary and /dev/net/tun needed) a real OpenVPN server with
clients on 127.0.0.1 replaces the simulation.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ovpnmon_demo: not installed

from ovpnmon_collector import rollup
from ovpnmon_common.storage import engines, migrations
from ovpnmon_demo.simulator import Simulation, populate, render_status, write_in_place

ROOT = Path(__file__).resolve().parent.parent
DAY = 86400


def log(message: str) -> None:
    print(f"demo: {message}", flush=True)


def seed(db_path: Path, status: Path, simulation: Simulation, now: int, days: int) -> None:
    """History through the collector's own code: coarse polls long ago, finer ones lately."""
    engine = engines.writer_engine(str(db_path))
    migrations.init_db(engine)
    started = time.monotonic()
    older = now - days * DAY
    recent = now - 3 * DAY
    populate(engine, str(status), older, recent, 1800, simulation)
    populate(engine, str(status), recent, now - 60, 120, simulation)
    rollup.catch_up(engine, now)
    engines.close_writer(engine)
    log(f"seeded {days} days of history in {time.monotonic() - started:.1f} s")


def simulate(status: Path, simulation: Simulation, period: float, stop: threading.Event) -> None:
    while not stop.wait(period):
        now = int(time.time())
        write_in_place(str(status), render_status(simulation.step(now), now))


def make_certificates(workdir: Path, names: list[str]) -> Path:
    """A small PKI so /certificates has something to show: some expiring soon, one expired."""
    sys.path.insert(0, str(ROOT / "tests"))
    from ovpn_harness import Pki

    pki = Pki.create(workdir / "pki")
    for index, name in enumerate(names):
        pki.issue(name, days=[-3, 12, 45, 200, 800][index % 5])
    return pki.directory


def write_config(workdir: Path, source_lines: str, port: int, interval: int, pki: Path) -> Path:
    config = workdir / "ovpnmon.conf"
    config.write_text(
        f"""; written by scripts/demo
[database]
path = {workdir / "ovpnmon.db"}

[collector]
interval = {interval}

[source:sim]
{source_lines}

[certificates]
paths = {pki}

[retention]
raw_days = 31

[api]
host = 127.0.0.1
port = {port}
"""
    )
    return config


def wait_healthy(url: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if b'"healthy"' in response.read():
                    return True
        except OSError:
            pass
        time.sleep(0.5)
    return False


def start_real_openvpn(workdir: Path):
    sys.path.insert(0, str(ROOT / "tests"))
    from ovpn_harness import Pki, Server, openvpn_available

    reason = openvpn_available()
    if reason:
        sys.exit(f"demo: --openvpn: {reason}")
    server = Server(workdir / "openvpn", Pki.create(workdir / "openvpn-pki"), status_version=3)
    server.start()
    for name in ("alice", "bob", "bob", "carol"):
        server.connect(name)
    return server


MARKER = ".ovpnmon-demo"


def prepare(workdir: Path) -> None:
    """An empty working directory: made, or emptied if an earlier demo made it (it carries the
    marker file). Anything else is left alone: --data names a directory the demo may delete."""
    ours = (workdir / MARKER).exists()
    if workdir.exists() and not ours and (not workdir.is_dir() or any(workdir.iterdir())):
        raise ValueError(
            f"--data {workdir} exists and was not made by the demo: give a new or empty "
            "directory (the demo deletes its working directory when it starts again)"
        )
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    (workdir / MARKER).write_text("made by scripts/demo; deleted by the next demo run\n")


def main() -> int:
    parser = argparse.ArgumentParser(description="Run the ovpnmon demo on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=5001, help="API port (default 5001)")
    parser.add_argument("--days", type=int, default=30, help="days of history to seed (default 30)")
    parser.add_argument("--clients", type=int, default=25, help="simulated clients (default 25)")
    parser.add_argument("--interval", type=int, default=5, help="poll interval in seconds")
    parser.add_argument("--data", default=str(ROOT / "demo-data"), help="working directory")
    parser.add_argument(
        "--openvpn",
        action="store_true",
        help="a real OpenVPN server and clients on 127.0.0.1 instead of the simulation (root)",
    )
    args = parser.parse_args()

    workdir = Path(args.data).resolve()
    try:
        prepare(workdir)
    except ValueError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    children: list[subprocess.Popen[bytes]] = []
    server = None

    def shutdown(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, shutdown)
    signal.signal(signal.SIGTERM, shutdown)

    try:
        if args.openvpn:
            server = start_real_openvpn(workdir)
            source = f"status_file = {server.status_file}"
            log("a real OpenVPN server with 4 clients runs on 127.0.0.1")
        else:
            status = workdir / "status.log"
            simulation = Simulation(clients=args.clients, seed=7)
            seed(workdir / "ovpnmon.db", status, simulation, int(time.time()), args.days)
            threading.Thread(
                target=simulate, args=(status, simulation, 2.0, stop), daemon=True
            ).start()
            source = f"status_file = {status}"
            log(f"a simulated OpenVPN with {args.clients} clients rewrites {status} every 2 s")
        pki = make_certificates(workdir, [f"user-{i:03d}" for i in range(8)])
        config = write_config(workdir, source, args.port, args.interval, pki)
        for command in (
            ["ovpnmon_collector", "run", "--config", str(config)],
            ["ovpnmon_api", "serve", "--config", str(config)],
        ):
            out = open(workdir / f"{command[0]}.log", "ab")  # noqa: SIM115 - the child owns it
            children.append(
                subprocess.Popen(
                    [sys.executable, "-m", *command],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
                )
            )
        base = f"http://127.0.0.1:{args.port}/api/v1"
        one, two = ("alice", "bob") if args.openvpn else ("user-000", "shared-laptop")
        if not wait_healthy(f"{base}/health", 60):
            log(f"the API did not become healthy; see {workdir}/*.log")
            return 1
        log(f"dashboard: http://127.0.0.1:{args.port}/")
        log(f"collector and API are running; logs in {workdir}")
        print(
            f"""
  dashboard:  http://127.0.0.1:{args.port}/

  or the API:
    curl -s {base}/health
    curl -s {base}/stats
    curl -s '{base}/analytics?range=7d'
    curl -s '{base}/stats/{one}?range=24h'
    curl -s '{base}/stats/{two}?range=30d'
    curl -s '{base}/stats/{one}?range=1y&resolution=daily'

  Ctrl-C stops everything.
""",
            flush=True,
        )
        while not stop.wait(1):
            for child in children:
                if child.poll() is not None:
                    log(f"{child.args[2]} exited with {child.returncode}; see {workdir}/*.log")
                    stop.set()
    finally:
        stop.set()
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        if server is not None:
            server.stop()
        log("stopped")
    return 0


if __name__ == "__main__":
    os.chdir(ROOT)
    sys.exit(main())
