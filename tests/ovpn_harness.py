"""A real OpenVPN 2.6 server and clients on 127.0.0.1, with a test PKI made by ``cryptography``.

Network rule: everything binds to and talks to 127.0.0.1 only. The server's tun device stays
unconfigured (ifconfig-noexec, route-noexec), clients use ``dev null`` and drop every pushed route,
so no packet goes into a tunnel or anywhere but loopback. ``keepalive 1 5`` makes counters grow
and lets the server notice a killed client within ten seconds.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

OPENVPN = shutil.which("openvpn") or "/usr/sbin/openvpn"


# A client drops everything a server pushes that could route traffic anywhere (network rule).
NO_PUSHED_ROUTES = "\n".join(
    [
        "ifconfig-noexec",
        "route-noexec",
        'pull-filter ignore "route"',
        'pull-filter ignore "redirect-gateway"',
        'pull-filter ignore "dhcp-option"',
        'pull-filter ignore "block-outside-dns"',
    ]
)


def openvpn_available() -> str | None:
    """Why a real OpenVPN cannot run here, or None if it can."""
    if not os.path.exists(OPENVPN):
        return "openvpn is not installed (apt-get install -y openvpn)"
    if os.geteuid() != 0:
        return "a real OpenVPN server needs root"
    if not os.path.exists("/dev/net/tun"):
        return "/dev/net/tun is missing"
    return None


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


@dataclass
class Pki:
    directory: Path
    ca_key: ec.EllipticCurvePrivateKey
    ca_cert: x509.Certificate

    @classmethod
    def create(cls, directory: Path) -> Pki:
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("ovpnmon test CA"))
            .issuer_name(_name("ovpnmon test CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        (directory / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, key, cert)

    def issue(self, cn: str, *, server: bool = False, days: int = 30) -> tuple[Path, Path]:
        """Write ``<file>.crt`` and ``<file>.key`` for ``cn``; returns their paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1 + max(0, -days)))
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self.ca_key, hashes.SHA256())
        )
        stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in cn)
        crt, keyfile = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(keyfile, key)
        return crt, keyfile


@dataclass
class Server:
    """One OpenVPN server process on 127.0.0.1 (UDP), with a status file and a management port."""

    workdir: Path
    pki: Pki
    status_version: int = 2
    management_password: str | None = "s3cret"
    # "keepalive 1 5": both ends ping. None: only clients given ping= do (no server pings, no
    # timeouts), so counters stand still while the clients are stopped.
    keepalive: str | None = "1 5"
    port: int = field(default_factory=lambda: free_port(socket.SOCK_DGRAM))
    management_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    clients: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def status_file(self) -> Path:
        return self.workdir / "status.log"

    @property
    def password_file(self) -> Path:
        return self.workdir / "mgmt-pw.txt"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        crt, key = self.pki.issue("server", server=True)
        management = f"management 127.0.0.1 {self.management_port}"
        if self.management_password is not None:
            self.password_file.write_text(self.management_password + "\n")
            management += f" {self.password_file}"
        config = f"""
mode server
tls-server
proto udp4
local 127.0.0.1
port {self.port}
dev tun
topology subnet
server 10.98.0.0 255.255.255.0
ifconfig-noexec
route-noexec
{f"keepalive {self.keepalive}" if self.keepalive else ""}
duplicate-cn
ca {self.pki.directory / "ca.crt"}
cert {crt}
key {key}
dh none
status {self.status_file} 1
status-version {self.status_version}
{management}
verb 3
"""
        (self.workdir / "server.conf").write_text(config)
        log = open(self.workdir / "server.log", "ab")  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            [OPENVPN, "--config", str(self.workdir / "server.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
        )
        self._wait_for("Initialization Sequence Completed", self.workdir / "server.log", 20)

    def connect(
        self, cn: str, label: str | None = None, *, ping: int | None = None, wait: bool = True
    ) -> subprocess.Popen[bytes]:
        """Start a client with certificate ``cn``; waits until it is connected (unless not
        ``wait``). ``ping``: the client pings the server every so many seconds."""
        label = label or f"{cn}-{len(self.clients)}"
        crt, key = self._client_cert(cn)
        workdir = self.workdir / "clients" / label
        workdir.mkdir(parents=True, exist_ok=True)
        config = f"""
client
dev null
proto udp4
remote 127.0.0.1 {self.port}
nobind
remote-cert-tls server
ca {self.pki.directory / "ca.crt"}
cert {crt}
key {key}
{NO_PUSHED_ROUTES}
{f"ping {ping}" if ping else ""}
verb 3
"""
        (workdir / "client.conf").write_text(config)
        logfile = workdir / "client.log"
        log = open(logfile, "ab")  # noqa: SIM115 - owned by the process
        process = subprocess.Popen(
            [OPENVPN, "--config", str(workdir / "client.conf")],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
        self.clients.append(process)
        if wait:
            self._wait_for("Initialization Sequence Completed", logfile, 20)
        return process

    def _client_cert(self, cn: str) -> tuple[Path, Path]:
        stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in cn)
        crt = self.pki.directory / f"{stem}.crt"
        if crt.exists():
            return crt, self.pki.directory / f"{stem}.key"
        return self.pki.issue(cn)

    def _wait_for(self, text: str, logfile: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if logfile.exists() and text in logfile.read_text(errors="replace"):
                return
            time.sleep(0.1)
        tail = logfile.read_text(errors="replace")[-3000:] if logfile.exists() else "(no log)"
        raise TimeoutError(f"OpenVPN did not log {text!r} within {timeout} s:\n{tail}")

    def management_status(self) -> str:
        """OpenVPN's own ``status 3`` over its management interface: one consistent answer."""
        with socket.create_connection(("127.0.0.1", self.management_port), timeout=10) as sock:
            reply = b""

            def until(marker: bytes) -> None:
                nonlocal reply
                while marker not in reply:
                    chunk = sock.recv(65536)
                    if not chunk:
                        raise ConnectionError(f"management closed before {marker!r}: {reply!r}")
                    reply += chunk

            if self.management_password is not None:
                until(b"ENTER PASSWORD:")
                sock.sendall(self.management_password.encode() + b"\n")
                until(b"SUCCESS:")
            reply = b""
            sock.sendall(b"status 3\n")
            until(b"\nEND\r\n")
            sock.sendall(b"quit\n")
        text = reply.decode(errors="replace")
        return text[text.index("TITLE") : text.index("\nEND\r\n") + 7]

    def stop(self) -> None:
        for process in [*self.clients, self.process]:
            if process is not None and process.poll() is None:
                process.terminate()
        for process in [*self.clients, self.process]:
            if process is not None:
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def wait_for_sessions(path: Path, count: int, timeout: float = 20) -> str:
    """Wait until the status file lists ``count`` authenticated clients; returns its text."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        if path.exists():
            text = path.read_text(errors="replace")
            rows = [
                fields
                for fields in (line.replace("\t", ",").split(",") for line in text.splitlines())
                if fields[0] == "CLIENT_LIST" and fields[1] != "UNDEF"
            ]
            if len(rows) == count and text.rstrip().endswith("END"):
                return text
        time.sleep(0.2)
    raise TimeoutError(f"status file never listed {count} clients:\n{text}")


def client_rows(text: str) -> dict[tuple[str, str], tuple[str, int, int]]:
    """(Client ID, Connected Since time_t) -> (CN, bytes received, bytes sent) of a status-version 3
    text or a ``status 3`` reply, parsed here, independently of ovpnmon's parser."""
    header: list[str] = []
    rows = {}
    for line in text.replace("\r\n", "\n").split("\n"):
        fields = line.split("\t")
        if fields[:2] == ["HEADER", "CLIENT_LIST"]:
            header = fields[2:]
        elif fields[0] == "CLIENT_LIST" and header:
            row = dict(zip(header, fields[1:], strict=True))
            if row["Common Name"] == "UNDEF":
                continue
            key = (row["Client ID"], row["Connected Since (time_t)"])
            rows[key] = (row["Common Name"], int(row["Bytes Received"]), int(row["Bytes Sent"]))
    return rows
