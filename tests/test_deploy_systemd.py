"""docs/deploy.md followed literally on Debian 12 under a real systemd (issue 13).

A bookworm container (tests/systemd_host.py) is made into the host the guide assumes — the
distribution's OpenVPN running as ``openvpn-server@server``, its PKI made with easy-rsa — and every
``sh`` block of the guide is run in it, in order, as written. Then, with real OpenVPN clients:
both services active, the collector READY with its status line, the watchdog never fired, totals
exact against OpenVPN's own counters (clients frozen with SIGSTOP so that counters stand still),
a certificate issued after start and a revoked one listed, an OpenVPN restart and a collector
restart survived, a backup while it runs and a restore, and the API running as its own user on
127.0.0.1 only.

Network rule: the container's network is private; server and clients talk on its own loopback,
the tunnel device stays unconfigured and clients drop every pushed route.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import pytest
from ovpn_harness import NO_PUSHED_ROUTES, client_rows

pytestmark = [pytest.mark.slow, pytest.mark.root]

ROOT = Path(__file__).parent.parent
GUIDE = ROOT / "docs" / "deploy.md"

# The host the guide starts from: OpenVPN from the distribution, PKI by easy-rsa. The server
# pings nobody (no keepalive) and clients ping it every second, so counters grow by themselves
# and stand still while the clients are stopped.
GIVEN = r"""
set -eux
make-cadir /etc/openvpn/server/easy-rsa
cd /etc/openvpn/server/easy-rsa
./easyrsa --batch init-pki
./easyrsa --batch --req-cn="ovpnmon test CA" build-ca nopass
./easyrsa --batch build-server-full server nopass
for name in alice bob; do ./easyrsa --batch build-client-full "$name" nopass; done
./easyrsa --batch gen-crl
cat > /etc/openvpn/server/server.conf <<'EOF'
port 1194
proto udp4
local 127.0.0.1
dev tun
topology subnet
server 10.98.0.0 255.255.255.0
ifconfig-noexec
route-noexec
ca easy-rsa/pki/ca.crt
cert easy-rsa/pki/issued/server.crt
key easy-rsa/pki/private/server.key
dh none
crl-verify easy-rsa/pki/crl.pem
duplicate-cn
verb 3
EOF
systemctl enable --now openvpn-server@server
"""

CLIENT = (
    """client
dev null
proto udp4
remote 127.0.0.1 1194
nobind
remote-cert-tls server
ca /etc/openvpn/server/easy-rsa/pki/ca.crt
cert /etc/openvpn/server/easy-rsa/pki/issued/{name}.crt
key /etc/openvpn/server/easy-rsa/pki/private/{name}.key
ping 1
verb 3
"""
    + NO_PUSHED_ROUTES.replace("{", "{{").replace("}", "}}")
    + "\n"
)


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    from conftest import require_e2e
    from systemd_host import Host, guide_script, unavailable

    require_e2e(unavailable())
    work = tmp_path_factory.mktemp("debian")
    wheels = work / "wheels"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheels)),
            *(f"{ROOT}[all]", "setuptools", "wheel"),
        ],
        check=True,
        capture_output=True,
        timeout=900,
    )
    booted = Host.boot(work)
    try:
        booted.run(GIVEN, timeout=300)
        shutil.copytree(  # the checkout, as an administrator would have it
            ROOT,
            booted.path("/root/ovpnmon"),
            ignore=shutil.ignore_patterns(
                ".venv", ".git", "build", "*.egg-info", "demo-data", "__pycache__", ".*_cache"
            ),
        )
        subprocess.run(["cp", "-r", str(wheels), str(booted.path("/root/wheels"))], check=True)
        booted.guide = booted.run(  # type: ignore[attr-defined]
            "cd /root/ovpnmon\n" + guide_script(GUIDE.read_text()),
            env={"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/root/wheels"},
            timeout=900,
        )
        yield booted
    finally:
        journal = booted.run("journalctl --no-pager -n 400", check=False).stdout
        (work / "journal.txt").write_text(journal)
        if not os.environ.get("OVPNMON_KEEP_HOST"):  # to look inside after a failure
            booted.poweroff()


def api(host, path: str) -> dict:
    result = host.run(f"curl -s --max-time 10 http://127.0.0.1:5001/api/v1{path}")
    return json.loads(result.stdout)


def connect(host, name: str, label: str) -> None:
    host.run(
        f"mkdir -p /root/clients && cat > /root/clients/{label}.conf <<'EOF'\n"
        f"{CLIENT.format(name=name)}EOF"
    )
    host.run(
        f"systemd-run --unit=vpn-{label} --property=Type=exec /usr/sbin/openvpn "
        f"--config /root/clients/{label}.conf"
    )


def clients(host, signal: str, labels: list[str]) -> None:
    units = " ".join(f"vpn-{label}" for label in labels)
    host.run(f"systemctl kill --signal={signal} {units}")


def status_rows(host) -> dict:
    text = host.run("cat /run/openvpn-server/status-server.log").stdout
    return client_rows(text)


def wait_until(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(2)
    raise AssertionError(f"{what} within {timeout} s; last: {last!r}")


def per_name(rows: dict) -> dict[str, tuple[int, int]]:
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, rx, tx in rows.values():
        totals[name][0] += rx
        totals[name][1] += tx
    return {name: (rx, tx) for name, (rx, tx) in totals.items()}


def api_totals(host, names) -> dict[str, tuple[int, int]]:
    found = {}
    for name in names:
        data = api(host, f"/stats/{name}")["data"]["totals"]
        found[name] = (data["received_bytes"], data["sent_bytes"])
    return found


def exact_after_freeze(host, labels: list[str], baseline: dict | None = None) -> dict:
    """Stop the clients, wait for OpenVPN to write their standing counters and the collector
    to read them; the API's totals must then equal them (plus ``baseline``: what earlier,
    closed sessions counted)."""
    clients(host, "SIGSTOP", labels)
    time.sleep(12)  # a status write after the last packet: the counters as they stand
    truth = per_name(status_rows(host))
    expected = {
        name: (
            rx + (baseline or {}).get(name, (0, 0))[0],
            tx + (baseline or {}).get(name, (0, 0))[1],
        )
        for name, (rx, tx) in truth.items()
    }
    wait_until(
        lambda: api_totals(host, expected) == expected, 40, "the API's totals equal OpenVPN's"
    )
    return expected


def test_the_deploy_guide_followed_literally_on_debian_12(host):
    # the guide ran to the end; both services are up, the collector told systemd it is ready
    assert "Successfully installed ovpnmon" in host.guide.stdout + host.guide.stderr
    for unit in (
        "openvpn-server@server",
        "ovpnmon-collector",
        "ovpnmon-api",
        "ovpnmon-backup.timer",
    ):
        assert host.run(f"systemctl is-active {unit}").stdout.strip() == "active", unit

    def ready():  # READY, then a status line after its first stored poll
        show = host.run("systemctl show -p Type,StatusText ovpnmon-collector").stdout
        return "Type=notify" in show and re.search(r"StatusText=\d+ clients, \d+ sessions", show)

    wait_until(ready, 30, "the collector's status line")

    # the API runs as its own user and listens on 127.0.0.1 only
    pid = host.run("systemctl show -p MainPID --value ovpnmon-api").stdout.strip()
    assert host.run(f"ps -o user= -p {pid}").stdout.strip() == "ovpnmon-api"
    # "active" is the process started (Type=simple): waitress binds a moment later
    listening = wait_until(
        lambda: re.search(r":5001\b", out := host.run("ss -Htln").stdout) and out,
        30,
        "the API listening on port 5001",
    )
    assert re.search(r"\b127\.0\.0\.1:5001\b", listening) and not re.search(
        r"(0\.0\.0\.0|\*|\[::\]):5001\b", listening
    ), listening

    # real clients: alice, bob, and bob again (duplicate-cn); after the first watch
    labels = ["alice-1", "bob-1", "bob-2"]
    for label in labels:
        connect(host, label.split("-")[0], label)
    wait_until(lambda: len(status_rows(host)) == 3, 60, "three sessions in the status file")
    time.sleep(25)  # counters grow; polls every 10 s
    assert api(host, "/health")["status"] == "healthy"

    # totals exact against OpenVPN's own counters
    first = exact_after_freeze(host, labels)
    assert set(first) == {"alice", "bob"}
    clients(host, "SIGCONT", labels)

    # a certificate issued after start and a revoked one show within a minute or two
    host.run(
        "cd /etc/openvpn/server/easy-rsa && ./easyrsa --batch build-client-full carol nopass"
        " && ./easyrsa --batch revoke bob && ./easyrsa --batch gen-crl"
    )

    def certificates():
        found = {c["common_name"]: c["revoked"] for c in api(host, "/certificates")["data"]}
        return found if found.get("carol") is False and found.get("bob") is True else None

    listed = wait_until(certificates, 150, "carol issued and bob revoked, listed")
    assert listed["alice"] is False

    # the collector restarted: it carries on, nothing lost or counted twice
    host.run("systemctl restart ovpnmon-collector")
    time.sleep(15)
    exact_after_freeze(host, labels)

    # OpenVPN restarted (the clients still stopped, then started anew): the collector reads the
    # new status file (the drop-in gave it the group again) and counts the new sessions in full
    before = api_totals(host, ["alice", "bob"])
    host.run("systemctl restart openvpn-server@server")
    clients(host, "SIGCONT", labels)
    host.run("systemctl stop " + " ".join(f"vpn-{label}" for label in labels))
    time.sleep(2)
    labels = ["alice-3", "carol-1"]  # bob is revoked now: the server refuses him (crl-verify)
    for label in labels:
        connect(host, label.split("-")[0], label)
    wait_until(lambda: len(status_rows(host)) == 2, 60, "two new sessions")
    time.sleep(15)
    exact_after_freeze(host, labels, baseline=before)
    assert api_totals(host, ["bob"]) == {"bob": before["bob"]}  # closed, counted once
    health = api(host, "/health")
    assert health["status"] == "healthy" and health["sources"]["server"]["state"] == "ok", health
    mode = host.run("stat -c '%a %G' /run/openvpn-server/status-server.log").stdout.split()
    assert mode == ["640", "openvpn-status"]
    clients(host, "SIGCONT", labels)

    # a backup while it runs; a restore is refused until the collector is stopped
    host.run("systemctl start ovpnmon-backup.service")
    newest = host.run("ls -1 /var/backups/ovpnmon/ovpnmon-*.db | tail -n 1").stdout.strip()
    refused = host.run(
        f"/opt/ovpnmon/venv/bin/ovpnmon-collector restore --config /etc/ovpnmon/ovpnmon.conf {newest}",
        check=False,
    )
    assert refused.returncode == 1 and "stop it first" in refused.stderr, refused.stderr
    host.run(
        "systemctl stop ovpnmon-collector && /opt/ovpnmon/venv/bin/ovpnmon-collector restore "
        f"--config /etc/ovpnmon/ovpnmon.conf {newest} && systemctl start ovpnmon-collector"
    )
    owner = host.run("stat -c '%U:%G %a' /var/lib/ovpnmon/ovpnmon.db").stdout.strip()
    assert owner == "ovpnmon:ovpnmon 640"
    wait_until(lambda: api(host, "/health")["status"] == "healthy", 60, "healthy after a restore")

    # the watchdog never fired, nothing restarted by itself, nothing crashed
    journal = host.run("journalctl --no-pager -u ovpnmon-collector -u ovpnmon-api").stdout
    assert "atchdog" not in journal and "Traceback" not in journal, journal[-3000:]
    for unit in ("ovpnmon-collector", "ovpnmon-api"):
        assert host.run(f"systemctl show -p NRestarts --value {unit}").stdout.strip() == "0"
