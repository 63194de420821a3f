"""Writers of status files with the system calls real writers use, for torn-read tests.

- ``InPlaceWriter``: OpenVPN 2.6 exactly (``status.c``): the file is opened once and kept open; each
  rewrite is ``lseek(fd, 0)``, one ``write()`` per line, then ``ftruncate(fd, position)``. A reader
  in the middle sees new lines followed by the old tail, which still ends with the old ``END``.
- ``TruncateFirstWriter``: ``open(O_TRUNC)``, one ``write()`` per line, ``close()``.
- ``RenameWriter``: a whole new file beside it, then ``rename()`` over the old one.

Each ``write`` may stop in the middle for ``stall`` seconds after ``stall_after`` lines (setting
``stalled`` first), which is how a test holds a torn state still for a reader.

Run as a script it rewrites a status file of N sessions again and again (``python
status_writers.py PATTERN PATH SESSIONS SECONDS PREFIX [SPREAD]``), versions numbered from 1, and
prints the last version written: session i of version k has received 1000*k + i bytes and sent
7*k bytes. SPREAD spreads each rewrite's writes over that many seconds (pauses of a hundredth of
it), as OpenVPN on a loaded host: readers then meet it mid-write often.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time

SEP = "\t"
TITLE = "OpenVPN 2.6.14 x86_64-pc-linux-gnu [SSL (OpenSSL)] [LZO] [LZ4] [EPOLL] [PKCS11] [AEAD]"
HEADER = (
    "Common Name\tReal Address\tVirtual Address\tVirtual IPv6 Address\tBytes Received\t"
    "Bytes Sent\tConnected Since\tConnected Since (time_t)\tUsername\tClient ID\tPeer ID\t"
    "Data Channel Cipher"
)


class Writer:
    stalled: threading.Event

    def __init__(self, path: str, spread: float = 0.0) -> None:
        self.path = path
        self.stalled = threading.Event()
        self.spread = spread  # a rewrite's writes spread over this long, as on a loaded host

    def write(self, text: str, stall_after: int | None = None, stall: float = 0.0) -> None:
        raise NotImplementedError

    def _lines(self, fd: int, text: str, stall_after: int | None, stall: float) -> None:
        lines = text.splitlines(keepends=True)
        every = max(1, len(lines) // 100)
        for number, line in enumerate(lines):
            if number == stall_after:
                self.stalled.set()
                time.sleep(stall)
            elif self.spread and number % every == every - 1:
                time.sleep(self.spread / 100)
            os.write(fd, line.encode())

    def close(self) -> None:
        pass


class InPlaceWriter(Writer):
    def __init__(self, path: str, spread: float = 0.0) -> None:
        super().__init__(path, spread)
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)

    def write(self, text: str, stall_after: int | None = None, stall: float = 0.0) -> None:
        os.lseek(self.fd, 0, os.SEEK_SET)
        self._lines(self.fd, text, stall_after, stall)
        os.ftruncate(self.fd, os.lseek(self.fd, 0, os.SEEK_CUR))

    def close(self) -> None:
        os.close(self.fd)


class TruncateFirstWriter(Writer):
    def write(self, text: str, stall_after: int | None = None, stall: float = 0.0) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._lines(fd, text, stall_after, stall)
        finally:
            os.close(fd)


class RenameWriter(Writer):
    def write(self, text: str, stall_after: int | None = None, stall: float = 0.0) -> None:
        temporary = f"{self.path}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            self._lines(fd, text, stall_after, stall)
        finally:
            os.close(fd)
        os.rename(temporary, self.path)


PATTERNS = {
    "in-place": InPlaceWriter,
    "truncate-first": TruncateFirstWriter,
    "rename": RenameWriter,
}


def version_text(k: int, sessions: int, written: int, since: int, prefix: str = "c") -> str:
    """Version ``k`` of a status-version 3 file: session i has received 1000*k + i bytes and sent
    7*k bytes, so a snapshot that is one write has every session at the same k."""
    lines = [
        f"TITLE{SEP}{TITLE}",
        f"TIME{SEP}x{SEP}{written}",
        f"HEADER{SEP}CLIENT_LIST{SEP}{HEADER}",
    ]
    for i in range(sessions):
        lines.append(
            SEP.join(
                (
                    "CLIENT_LIST",
                    f"{prefix}{i:05d}",
                    # each file its own clients' addresses, as separate OpenVPN instances have
                    f"127.{ord(prefix[0]) % 250}.{i // 250}.{i % 250 + 1}:{20000 + i}",
                    f"10.8.{i // 250}.{i % 250 + 2}",
                    "",
                    str(1000 * k + i),
                    str(7 * k),
                    "x",
                    str(since),
                    "UNDEF",
                    str(i),
                    str(i),
                    "AES-256-GCM",
                )
            )
        )
    lines.append(f"HEADER{SEP}ROUTING_TABLE{SEP}Virtual Address{SEP}Common Name{SEP}Last Ref")
    lines += [f"GLOBAL_STATS{SEP}Max bcast/mcast queue length{SEP}0", "END"]
    return "\n".join(lines) + "\n"


def main() -> None:
    pattern, path, sessions, seconds, prefix = sys.argv[1:6]
    spread = float(sys.argv[6]) if len(sys.argv) > 6 else 0.0
    since = int(time.time())
    writer = PATTERNS[pattern](path, spread)
    rng = random.Random(f"{pattern}{prefix}")
    end = time.monotonic() + float(seconds)
    k = 0
    while time.monotonic() < end:
        k += 1
        writer.write(version_text(k, int(sessions), int(time.time()), since, prefix))
        # OpenVPN's shortest status interval is 1 s; this writer is busier than that
        time.sleep(rng.uniform(0.5, 1.0))
    writer.close()
    print(k, flush=True)


if __name__ == "__main__":
    main()
