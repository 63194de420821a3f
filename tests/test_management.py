"""The management-interface client against a scripted peer on 127.0.0.1 (fault injection).

The real OpenVPN management interface is exercised by the end-to-end tests; here a loopback peer
replays a real ``status 3`` reply and misbehaves on purpose.
"""

import contextlib
import os
import socket
import threading
import time

import pytest
from conftest import FIXTURES

from ovpnmon_collector.parser import parse_status
from ovpnmon_collector.sources import ManagementSource, SourceError

REPLY = (FIXTURES / "management_status3_crlf.txt").read_bytes()
INFO = b">INFO:OpenVPN Management Interface Version 5 -- type 'help' for more info\r\n"


class Peer:
    """A one-connection-at-a-time TCP or unix listener running ``script(conn)`` per client."""

    def __init__(self, script, unix_path=None):
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
            self.address = f"unix:{unix_path}"
        else:
            self.sock = socket.socket()
            self.sock.bind(("127.0.0.1", 0))
            self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.sock.listen(1)
        self.script = script
        self.received = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, contextlib.suppress(OSError):
                self.script(self, conn)

    def readline(self, conn):
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                break
            data += chunk
        self.received.append(data)
        return data

    def close(self):
        self.sock.close()


def serve_status(peer, conn, password=None):
    if password is not None:
        conn.sendall(b"ENTER PASSWORD:")
        if peer.readline(conn).rstrip(b"\r\n") != password.encode():
            conn.sendall(b"ERROR: bad password\r\n")
            return
        conn.sendall(b"SUCCESS: password is correct\r\n")
    conn.sendall(INFO)
    assert peer.readline(conn) == b"status 3\n"
    head, tail = REPLY.split(b"HEADER\tROUTING_TABLE", 1)
    # a notification arrives in the middle of the reply, split across packets
    conn.sendall(head + b">BYTECOUNT_CLI:1,2,3\r\n")
    conn.sendall(b"HEADER\tROUTING_TABLE" + tail[:40])
    conn.sendall(tail[40:])
    peer.readline(conn)  # quit


@pytest.fixture
def peers():
    made = []
    yield made
    for peer in made:
        peer.close()


def test_status_with_password_and_interleaved_notifications(tmp_path, peers):
    peer = Peer(lambda p, c: serve_status(p, c, "s3cret"))
    peers.append(peer)
    pw = tmp_path / "pw.txt"
    pw.write_text("s3cret\n")
    text = ManagementSource("tcp", peer.address, str(pw), timeout=5).read()
    assert ">BYTECOUNT" not in text and "\r" not in text
    snapshot = parse_status(text)
    assert sorted(s.common_name for s in snapshot.sessions) == ["alice", "bob", "bob"]
    deadline = time.monotonic() + 5
    while len(peer.received) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert peer.received[1:] == [b"status 3\n", b"quit\n"]  # goodbye: the next tool's turn


def test_unix_socket_without_password(tmp_path, peers):
    path = str(tmp_path / "mgmt.sock")
    peer = Peer(lambda p, c: serve_status(p, c), unix_path=path)
    peers.append(peer)
    text = ManagementSource("tcp", peer.address).read()
    assert len(parse_status(text).sessions) == 3


def test_wrong_password(tmp_path, peers):
    peer = Peer(lambda p, c: serve_status(p, c, "right"))
    peers.append(peer)
    pw = tmp_path / "pw.txt"
    pw.write_text("wrong\n")
    with pytest.raises(SourceError, match=r"^management 127\.0\.0\.1:\d+: password rejected$"):
        ManagementSource("tcp", peer.address, str(pw)).read()


def test_password_asked_but_none_configured(peers):
    peer = Peer(lambda p, c: serve_status(p, c, "right"))
    peers.append(peer)
    with pytest.raises(SourceError, match="asks for a password: set management_password_file"):
        ManagementSource("tcp", peer.address).read()


def test_unreadable_password_file(tmp_path):
    with pytest.raises(SourceError, match=r"cannot read password file .*nope: No such file"):
        ManagementSource("tcp", "127.0.0.1:9", str(tmp_path / "nope")).read()


def test_refused_connection():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound but not listening: connections are refused
        with pytest.raises(
            SourceError,
            match=rf"^management 127\.0\.0\.1:{port}: cannot connect: Connection refused$",
        ):
            ManagementSource("tcp", f"127.0.0.1:{port}", timeout=2).read()


def test_hanging_peer_times_out(peers):
    stop = threading.Event()
    peer = Peer(lambda p, c: stop.wait(5))
    peers.append(peer)
    try:
        with pytest.raises(
            SourceError, match=r"no answer within 0\.3 s \(busy with another client"
        ):
            ManagementSource("tcp", peer.address, timeout=0.3).read()
    finally:
        stop.set()


def test_peer_closing_mid_reply(peers):
    def script(peer, conn):
        conn.sendall(INFO)
        peer.readline(conn)
        conn.sendall(REPLY[:200])

    peer = Peer(script)
    peers.append(peer)
    with pytest.raises(SourceError, match="connection closed before the reply ended"):
        ManagementSource("tcp", peer.address).read()


def test_error_reply(peers):
    def script(peer, conn):
        conn.sendall(INFO)
        peer.readline(conn)
        conn.sendall(b"ERROR: unknown command, enter 'help' for more options\r\nEND\r\n")

    peer = Peer(script)
    peers.append(peer)
    with pytest.raises(SourceError, match="ERROR: unknown command"):
        ManagementSource("tcp", peer.address).read()


def test_missing_unix_socket(tmp_path):
    path = tmp_path / "absent.sock"
    with pytest.raises(SourceError, match="cannot connect: No such file or directory"):
        ManagementSource("tcp", f"unix:{path}").read()
    assert not os.path.exists(path)
