"""A Debian 12 host under a real systemd, in a container: for following docs/deploy.md literally.

``debian_root()`` debootstraps a bookworm root from the Debian package registry once and keeps it
in a cache (``$OVPNMON_TEST_CACHE``, default ``/var/cache/ovpnmon-tests``); ``Host.boot`` copies
it and boots the copy with ``systemd-nspawn --boot`` (no systemd needed on the machine running
the tests), with a private network — its own loopback, and CAP_NET_ADMIN kept, which OpenVPN
needs — and ``/dev/net/tun`` passed in. Commands run inside through ``nsenter`` into its PID 1,
with a clean environment. The container has no registry access: what it installs comes from a
wheelhouse built outside.

Network rule: nothing in the container reaches beyond its own loopback (its network is private).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SUITE = "bookworm"
# what the guide assumes of a host (OpenVPN from the distribution, easy-rsa, systemd) and what
# its commands use (python3-venv, acl, curl), installed up front: the container has no network
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "openvpn",
    "easy-rsa",
    "acl",
    "python3",
    "python3-venv",
    "iproute2",
    "procps",
    "curl",
    "ca-certificates",
)
CACHE = Path(os.environ.get("OVPNMON_TEST_CACHE", "/var/cache/ovpnmon-tests"))
INSIDE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def unavailable() -> str | None:
    """Why a container host cannot run here, or None."""
    if os.geteuid() != 0:
        return "a systemd container needs root"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} is missing (apt-get install -y debootstrap systemd-container)"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def debian_root() -> Path:
    """The cached bookworm root (built on first use: about a minute)."""
    key = hashlib.sha256(f"{SUITE} {MIRROR} {' '.join(PACKAGES)}".encode()).hexdigest()[:12]
    root = CACHE / f"{SUITE}-{key}"
    if (root / "etc" / "os-release").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = CACHE / f"{root.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    subprocess.run(
        [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(PACKAGES)}",
            SUITE,
            str(partial),
            MIRROR,
        ],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    partial.rename(root)
    return root


class Host:
    """One booted container: ``run`` a shell script in it, ``path`` its files from outside."""

    def __init__(self, root: Path, process: subprocess.Popen[bytes], log: Path) -> None:
        self.root = root
        self.process = process
        self.log = log
        self.pid1 = 0

    @classmethod
    def boot(cls, workdir: Path, binds: tuple[str, ...] = ()) -> Host:
        root = workdir / "root"
        subprocess.run(["cp", "-a", "--reflink=auto", str(debian_root()), str(root)], check=True)
        (root / "etc" / "hostname").write_text("vpn\n")
        log = workdir / "nspawn.log"
        command = [
            "systemd-nspawn",
            "--quiet",
            "--directory",
            str(root),
            "--boot",
            "--register=no",
            "--keep-unit",
            "--private-network",
            "--bind=/dev/net/tun",
            f"--machine=ovpnmon-{os.getpid()}",
            *(f"--bind={b}" for b in binds),
        ]
        process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        host = cls(root, process, log)
        host._wait_for_boot()
        return host

    def _wait_for_boot(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the container ended: {self.log.read_text()[-3000:]}")
            children = subprocess.run(
                ["ps", "-o", "pid=,comm=", "--ppid", str(self.process.pid)],
                capture_output=True,
                text=True,
            ).stdout.split()
            if len(children) >= 2 and children[1] == "systemd":
                self.pid1 = int(children[0])
                break
            time.sleep(0.2)
        else:
            raise TimeoutError("the container's systemd did not start")
        # systemd is there before its bus socket: "Failed to connect to bus" means not yet
        while True:
            state = self.run("systemctl is-system-running --wait", check=False, timeout=120)
            if "Failed to connect to bus" not in state.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if state.stdout.strip() not in ("running", "degraded"):
            raise RuntimeError(f"the container did not boot: {state.stdout} {state.stderr}")

    def run(
        self,
        script: str,
        *,
        check: bool = True,
        timeout: float = 600,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``script`` with /bin/sh as root inside, in a clean environment."""
        variables = {"PATH": INSIDE_PATH, "HOME": "/root", "LANG": "C.UTF-8", **(env or {})}
        result = subprocess.run(
            [
                "nsenter",
                "--target",
                str(self.pid1),
                "--all",
                "env",
                "-i",
                *(f"{k}={v}" for k, v in variables.items()),
                "/bin/sh",
                "-c",
                script,
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"inside the container, exit {result.returncode}:\n{script}\n--- stdout\n"
                f"{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-6000:]}"
            )
        return result

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def poweroff(self) -> None:
        if self.process.poll() is None:
            self.run("systemctl poweroff", check=False, timeout=30)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def guide_script(markdown: str) -> str:
    """Every ``sh`` block of a guide, in order, as one script (one shell, as a reader would)."""
    blocks = re.findall(r"^```sh\n(.*?)^```$", markdown, flags=re.S | re.M)
    return "set -eux\n" + "\n".join(blocks)
