"""Where status text comes from: a status file, or the management interface (TCP or unix socket).

A source only fetches text; parsing is ``parser.parse_status``. Every failure is a ``SourceError``
whose message names the source and says what went wrong in words an administrator can act on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import Protocol

from ovpnmon_collector.clock import SYSTEM_CLOCK, Clock
from ovpnmon_common.config import SourceConfig, parse_management_address
from ovpnmon_common.files import (
    MIB,
    BadFile,
    check_regular,
    describe_size,
    open_regular,
    read_fd,
    read_regular_file,
)

# The most ovpnmon reads of one status: a status file or a management reply. 10,000 sessions
# are about 2.2 MB, so this is some 140,000 sessions, far above any one OpenVPN process; and it
# bounds the collector's memory (a poll needs about ten times the text's size).
MAX_STATUS_BYTES = 32 * MIB
MAX_REPLY_BYTES = MAX_STATUS_BYTES
MAX_PASSWORD_BYTES = 4096


class SourceError(Exception):
    """A source could not be read this poll."""


class Source(Protocol):
    """Where one OpenVPN instance's status text comes from."""

    name: str
    kind: str  # "file" or "management": a stale TIME only means something for a file

    def read(self) -> str:
        """The whole status text now; ``SourceError`` with a message for a person."""
        ...


log = logging.getLogger("ovpnmon.sources")

# How long a status file must have stood unchanged before it is read (see StatusFileSource).
DEFAULT_SETTLE = 0.25
# File times come from the kernel's coarse clock, up to a tick (1-10 ms) behind time.time().
_TICK = 0.02


class StatusFileSource:
    """A ``status`` file OpenVPN rewrites every few seconds, read only when it is one whole write.

    OpenVPN 2.6 rewrites the file in place: it seeks to 0, writes one line per ``write()`` and
    truncates at the end (``status.c``), so a reader can see new lines followed by the old tail,
    which still ends with the old ``END``; other writers truncate first, or write a new file and
    rename it. Nothing in the text tells a torn read from a whole one, so the text is not asked:
    the file is read only after its inode, size, modification and change times have stood
    unchanged for ``settle`` seconds, and used only if they are still the same after the read.
    Any write during that time moves the times (the settle covers the kernel's clock tick, or a
    whole second on file systems that keep whole seconds), so what is read is the file as the last
    complete rewrite left it. OpenVPN writes a status in one go from its event loop (10,000
    sessions take a few milliseconds); only a writer that stopped in the middle of a rewrite for
    longer than ``settle`` could be read half-way.

    The wait is on the file's own times (``settle`` after the last write, usually over long before
    a poll) or, when the wall clock cannot be trusted for that (it stepped back), on the monotonic
    clock since the times were first seen. A file that never stands still for ``settle`` within
    ``timeout`` is a source error for this poll.
    """

    kind = "file"

    def __init__(
        self,
        name: str,
        path: str,
        *,
        settle: float = DEFAULT_SETTLE,
        timeout: float = 5.0,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.name = name
        self.path = path
        self.settle = settle
        self.timeout = timeout
        self.clock = clock
        self._seen: tuple[tuple[int, ...], float] | None = None  # times, monotonic first seen

    def read(self) -> str:
        """The file's text once it has stood still for ``settle`` (see the class)."""
        try:
            return self._read_settled().decode("utf-8", errors="replace")
        except BadFile as exc:
            raise SourceError(f"status file {self.path} {exc}") from None
        except FileNotFoundError:
            raise SourceError(
                f"status file {self.path} does not exist (is OpenVPN running?)"
            ) from None
        except PermissionError:
            raise SourceError(
                f"status file {self.path}: permission denied (see the deployment guide on "
                "giving the collector read access)"
            ) from None
        except OSError as exc:
            raise SourceError(
                f"cannot read status file {self.path}: {exc.strerror or exc}"
            ) from None

    def _read_settled(self) -> bytes:
        deadline = self.clock.monotonic() + self.timeout
        while True:
            fd, info = open_regular(self.path, MAX_STATUS_BYTES)
            try:
                data = self._read_open(fd, info, deadline)
            finally:
                os.close(fd)
            if data is not None:
                return data
            # replaced by a new file (written elsewhere and renamed): read that one

    def _read_open(self, fd: int, info: os.stat_result, deadline: float) -> bytes | None:
        """The whole file once it has settled, or None if the path now names another file."""
        while True:
            times = _identity(info)
            wait = unchanged = 0.0
            if self.settle > 0:  # 0: trust every read (a writer that renames a whole file)
                unchanged = self._unchanged_for(times, info)
                wait = self.settle + _granularity(info) - unchanged
            if wait <= 0:
                data = read_fd(fd, MAX_STATUS_BYTES)
                after = os.fstat(fd)
                if _identity(after) != times or len(data) != info.st_size:
                    info = after  # written while being read: wait for it to settle again
                    check_regular(info, MAX_STATUS_BYTES)
                    continue
                if self.settle == 0 or _ends_whole(data):
                    return data
                # Empty, or no END: no whole status, whatever the times say. A writer that
                # truncated first was held up (the kernel throttling its writes, say): wait for
                # it to go on, and report the file incomplete only if it never does.
                changed = self._wait_for_change(fd, times, deadline)
                if changed is None:
                    return data  # the parser says what is wrong with it
                if changed == "replaced":
                    return None
                info = os.fstat(fd)
                check_regular(info, MAX_STATUS_BYTES)
                continue
            log.debug(
                "%s: status file written %.3f s ago, waiting %.3f s for it to settle",
                self.name,
                unchanged,
                wait,
            )
            if self.clock.monotonic() + wait > deadline:
                raise SourceError(
                    f"status file {self.path} never stood unchanged for {self.settle:g} s "
                    f"within {self.timeout:g} s (is something rewriting it all the time?)"
                )
            self.clock.sleep(wait)
            if os.stat(self.path).st_ino != info.st_ino:
                return None
            info = os.fstat(fd)
            check_regular(info, MAX_STATUS_BYTES)

    def _wait_for_change(self, fd: int, times: tuple[int, ...], deadline: float) -> str | None:
        """Wait until the open file changes from ``times`` ("changed") or the path names another
        file ("replaced"); None at the deadline."""
        log.debug("%s: status file incomplete, waiting for its writer", self.name)
        while self.clock.monotonic() < deadline:
            self.clock.sleep(min(self.settle / 5, max(0.0, deadline - self.clock.monotonic())))
            if os.stat(self.path).st_ino != os.fstat(fd).st_ino:
                return "replaced"
            if _identity(os.fstat(fd)) != times:
                return "changed"
        return None

    def _unchanged_for(self, times: tuple[int, ...], info: os.stat_result) -> float:
        """How long the file is known to have stood as ``times`` says: by its own modification
        and change times, or since this source first saw them."""
        now = self.clock.monotonic()
        if self._seen is None or self._seen[0] != times:
            self._seen = (times, now)
        by_monotonic = now - self._seen[1]
        age = self.clock.time() - max(info.st_mtime_ns, info.st_ctime_ns) / 1e9
        # a negative age is a wall clock stepped back: the file's times say nothing then
        return max(by_monotonic, age if age >= 0 else 0.0)


def _ends_whole(data: bytes) -> bool:
    """Whether the text ends as every whole status does: with END (blank lines after it aside)."""
    return data[-4096:].rstrip().endswith(b"END")


def _identity(info: os.stat_result) -> tuple[int, ...]:
    """What any write to the file changes."""
    return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def _granularity(info: os.stat_result) -> float:
    """How coarse the file system's times are: whole seconds on some (a write within the same
    second leaves them as they were), else the kernel's clock tick."""
    whole = info.st_mtime_ns % 1_000_000_000 == 0 and info.st_ctime_ns % 1_000_000_000 == 0
    return 1.0 if whole else _TICK


class ManagementSource:
    """OpenVPN's management interface: connect, ``status 3``, ``quit``, disconnect, every poll.

    The interface serves one client at a time, so the connection is short and every step has a
    deadline; other tools get their turn between polls.
    """

    kind = "management"

    def __init__(
        self,
        name: str,
        address: str,
        password_file: str | None = None,
        timeout: float = 5.0,
        *,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.name = name
        self.address = address
        self.target = parse_management_address(address)
        self.password_file = password_file
        self.timeout = timeout
        self.clock = clock

    def read(self) -> str:
        """``status 3`` over the management socket."""
        password = self._password()
        deadline = self.clock.monotonic() + self.timeout
        try:
            sock = self._connect()
        except OSError as exc:
            raise SourceError(
                f"management {self.address}: cannot connect: {exc.strerror or exc}"
            ) from None
        try:
            return _Conversation(sock, self.address, deadline, self.clock).status(password)
        except TimeoutError:
            raise SourceError(
                f"management {self.address}: no answer within {self.timeout:g} s "
                "(busy with another client, or not a management interface?)"
            ) from None
        except OSError as exc:
            raise SourceError(
                f"management {self.address}: connection failed: {exc.strerror or exc}"
            ) from None
        finally:
            sock.close()

    def _password(self) -> str | None:
        if not self.password_file:
            return None
        try:
            data = read_regular_file(self.password_file, MAX_PASSWORD_BYTES)
        except (OSError, BadFile) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise SourceError(
                f"management {self.address}: cannot read password file {self.password_file}: {why}"
            ) from None
        return data.decode("utf-8", errors="replace").split("\n", 1)[0].rstrip("\r")

    def _connect(self) -> socket.socket:
        host, port = self.target
        if host == "unix":
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(str(port))
            except OSError:
                sock.close()
                raise
            return sock
        return socket.create_connection((host, int(port)), timeout=self.timeout)


class _Conversation:
    """One exchange with the management interface, line by line, within one deadline."""

    def __init__(self, sock: socket.socket, address: str, deadline: float, clock: Clock) -> None:
        self.sock = sock
        self.address = address
        self.deadline = deadline
        self.clock = clock
        self.buffer = b""
        self.received = 0

    def status(self, password: str | None) -> str:
        greeting = self._until_greeting()
        if greeting == "password":
            if password is None:
                raise SourceError(
                    f"management {self.address} asks for a password: set management_password_file"
                )
            self.sock.sendall(password.encode() + b"\n")
            while True:
                line = self._line()
                if line.startswith("SUCCESS:"):
                    break
                if line.startswith("ERROR:") or "ENTER PASSWORD" in line:
                    raise SourceError(f"management {self.address}: password rejected")
        self.sock.sendall(b"status 3\n")
        reply = self._until_end()
        lines = [
            line.rstrip("\r")
            for line in reply.decode("utf-8", errors="replace").split("\n")
            if not line.startswith(">")  # real-time notifications interleave with the reply
        ]
        lines = [line for line in lines if line]
        if lines and lines[0].startswith("ERROR:"):
            raise SourceError(f"management {self.address}: {lines[0]}")
        with contextlib.suppress(OSError):
            self.sock.sendall(b"quit\n")
        return "\n".join(lines) + "\n"

    def _until_end(self) -> bytes:
        """Everything up to and including the reply's ``END`` line (linear in the reply size)."""
        data = bytearray(self.buffer)
        self.buffer = b""
        searched = 0
        while True:
            for marker in (b"\nEND\r\n", b"\nEND\n"):
                found = data.find(marker, max(0, searched - len(marker)))
                if found >= 0:
                    return bytes(data[: found + len(marker)])
            if data.startswith((b"END\r\n", b"END\n")):
                return bytes(data)
            searched = len(data)
            data += self._recv()

    def _until_greeting(self) -> str:
        while True:
            if b"ENTER PASSWORD:" in self.buffer:
                self.buffer = self.buffer.split(b"ENTER PASSWORD:", 1)[1]
                return "password"
            if b"\n" in self.buffer:
                line = self._line()
                if line.startswith(">INFO:"):
                    return "open"
                continue
            self._fill()

    def _line(self) -> str:
        while b"\n" not in self.buffer:
            self._fill()
        raw, self.buffer = self.buffer.split(b"\n", 1)
        return raw.rstrip(b"\r").decode("utf-8", errors="replace")

    def _fill(self) -> None:
        self.buffer += self._recv()
        if len(self.buffer) > 65536:
            raise SourceError(f"management {self.address}: no greeting line in the first 64 KiB")

    def _recv(self) -> bytes:
        remaining = self.deadline - self.clock.monotonic()
        if remaining <= 0:
            raise TimeoutError
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(262144)
        if not chunk:
            raise SourceError(
                f"management {self.address}: connection closed before the reply ended"
            )
        self.received += len(chunk)
        if self.received > MAX_REPLY_BYTES:
            raise SourceError(
                f"management {self.address}: reply larger than {describe_size(MAX_REPLY_BYTES)}, "
                "the most ovpnmon reads of one status"
            )
        return chunk


def build_source(config: SourceConfig) -> Source:
    """The source a ``[source:NAME]`` section describes."""
    if config.status_file:
        return StatusFileSource(
            config.name, config.status_file, settle=config.settle, timeout=config.timeout
        )
    assert config.management is not None
    return ManagementSource(
        config.name, config.management, config.management_password_file, config.timeout
    )
