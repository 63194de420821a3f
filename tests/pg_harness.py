"""A real PostgreSQL for the tests and benchmarks: Debian's server binaries, a cluster of its own in a temporary
directory (``initdb -A trust``), listening on 127.0.0.1 and a socket in that directory only, and a
new database for each test that asks for one.

As root the cluster belongs to the ``postgres`` user (the server refuses to run as root); as
anyone else, to that user.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

SERVER_GLOB = "/usr/lib/postgresql/*/bin"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_bin() -> str | None:
    """The directory of Debian's PostgreSQL server binaries (newest), or None."""
    found = sorted(glob.glob(SERVER_GLOB), key=lambda p: int(p.split("/")[-2]))
    return found[-1] if found else None


def unavailable() -> str | None:
    """Why a PostgreSQL cluster cannot be started here, or None."""
    if server_bin() is None:
        return "PostgreSQL's server is not installed (apt-get install -y postgresql)"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'ovpnmon[postgresql]')"
    return None


class Cluster:
    """One running cluster; ``database()`` makes a new empty database and returns its URL."""

    def __init__(self) -> None:
        self.bin = server_bin()
        assert self.bin is not None
        self.root = tempfile.mkdtemp(prefix="ovpnmon-pg-")
        self.data = os.path.join(self.root, "data")
        self.port = free_port()
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self._run("initdb", "-D", self.data, "-A", "trust", "-U", "postgres", "-E", "UTF8")
        self.start()
        self.base = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}"
        self._free: list[str] = []  # databases given back, emptied

    def start(self) -> None:
        """Start the server (again), listening on 127.0.0.1 and its socket directory only."""
        self._run(
            "pg_ctl",
            "-D",
            self.data,
            "-l",
            os.path.join(self.root, "server.log"),
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off",
            "-w",
            "start",
        )

    def halt(self) -> None:
        """Stop the server (its data stays): what a collector and the API meet in an outage."""
        self._run("pg_ctl", "-D", self.data, "-m", "fast", "-w", "stop")

    def _run(self, tool: str, *args: str) -> None:
        command = [os.path.join(self.bin or "", tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def admin(self, sql: str) -> None:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(sql)

    def database(self) -> str:
        """An empty database (no tables): a new one, or one a finished test gave back, emptied
        (dropping and creating its schema is a tenth of the cost of a new database)."""
        if self._free:
            return self._free.pop()
        name = "t_" + uuid.uuid4().hex[:12]
        self.admin(f"CREATE DATABASE {name}")
        return f"{self.base}/{name}"

    def drop(self, url: str) -> None:
        """Take a database back: its connections ended, its tables gone, ready for the next."""
        import psycopg

        name = url.rsplit("/", 1)[1]
        self.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname={name}", autocommit=True
        ) as conn:
            conn.execute("DROP SCHEMA public CASCADE")
            conn.execute("CREATE SCHEMA public")
        self._free.append(url)

    def stop(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", self.data, "-m", "immediate", "-w", "stop")
        deadline = time.monotonic() + 10
        while os.path.exists(os.path.join(self.data, "postmaster.pid")):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)
