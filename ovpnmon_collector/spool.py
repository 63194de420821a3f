"""The outage spool: polls the database could not take, kept on local disk until it can.

While the database is unreachable (PostgreSQL restarting, a network between a VPN host and its
database server down, a SQLite file on a full disk), the collector goes on reading its sources
every interval and keeps what each poll read here: the status text of each source, the poll's
time and its monotonic interval. When the database answers again, the collector replays the
kept polls through its own accounting, oldest first and each with its own time, before the
poll of the moment: every session that opened, moved or closed meanwhile is counted exactly as
if nothing had happened (a poll late for a bucket a rollup already closed adds itself to it).

One file per poll (gzip-compressed JSON, written to a temporary name and renamed, so a crash
leaves whole files only), in the spool directory: it survives a restart of the collector, and
the next collector to start replays it. The spool is bounded (``[collector] spool_mb``): when a
new poll would pass the bound, every other kept poll between the first and the newest goes,
so the spool covers the whole outage at half the resolution; a session that closed between
two kept polls then loses the bytes it moved after the earlier one (logged).
"""

from __future__ import annotations

import contextlib
import gzip
import json
import logging
import os
from dataclasses import dataclass

log = logging.getLogger("ovpnmon.spool")

SUFFIX = ".json.gz"


@dataclass(frozen=True)
class SpooledPoll:
    """One poll as the spool keeps it."""

    ts: int  # the poll's wall-clock time
    interval: float  # monotonic seconds since the poll before it (0: unknown)
    texts: dict[str, str]  # source name -> the status text read
    errors: dict[str, str]  # source name -> why it could not be read


class Spool:
    """The polls kept in ``directory``, oldest first; at most ``max_bytes`` of them on disk."""

    def __init__(self, directory: str, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._seq = 0

    def names(self) -> list[str]:
        """The kept polls' file names, oldest first (none if the directory is missing)."""
        try:
            found = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(name for name in found if name.endswith(SUFFIX))

    def __len__(self) -> int:
        return len(self.names())

    def size(self) -> int:
        """Bytes the kept polls take on disk."""
        total = 0
        for name in self.names():
            with contextlib.suppress(FileNotFoundError):
                total += os.path.getsize(os.path.join(self.directory, name))
        return total

    def add(self, poll: SpooledPoll) -> None:
        """Keep ``poll`` (raises ``OSError`` when it cannot be written)."""
        os.makedirs(self.directory, mode=0o750, exist_ok=True)
        self._seq += 1
        name = f"{poll.ts:012d}-{os.getpid()}-{self._seq:09d}{SUFFIX}"
        body = {"ts": poll.ts, "interval": poll.interval, "texts": poll.texts}
        body["errors"] = poll.errors
        data = gzip.compress(json.dumps(body).encode(), compresslevel=6)
        path = os.path.join(self.directory, name)
        partial = os.path.join(self.directory, f".{name}.partial")
        with open(partial, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        self._bound()

    def load(self, name: str) -> SpooledPoll | None:
        """The kept poll ``name``; None (and the file set aside) if it cannot be read."""
        path = os.path.join(self.directory, name)
        try:
            with open(path, "rb") as found:
                body = json.loads(gzip.decompress(found.read()))
            return SpooledPoll(
                int(body["ts"]),
                float(body["interval"]),
                {str(k): str(v) for k, v in body["texts"].items()},
                {str(k): str(v) for k, v in body.get("errors", {}).items()},
            )
        except (OSError, EOFError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.error("spooled poll %s cannot be read (%s): set aside as %s.bad", path, exc, path)
            self.set_aside(name)
            return None

    def set_aside(self, name: str) -> None:
        """Keep the poll ``name`` out of the spool (renamed ``.bad``) for a person to look at."""
        path = os.path.join(self.directory, name)
        with contextlib.suppress(OSError):
            os.replace(path, path + ".bad")

    def remove(self, name: str) -> None:
        """Forget the kept poll ``name`` (it was written to the database)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.directory, name))

    def _bound(self) -> None:
        """Thin the kept polls until they fit ``max_bytes``: every other one between the first
        and the newest goes; at the last, the oldest."""
        while self.size() > self.max_bytes:
            names = self.names()
            if len(names) <= 1:
                return  # the one poll there is stays, whatever its size
            middle = names[1:-1][::2]
            dropped = middle if middle else names[:1]
            for name in dropped:
                self.remove(name)
            log.warning(
                "spool over %d MiB: %d older polls dropped (%d kept); sessions that closed "
                "between two kept polls lose the bytes moved after the earlier one",
                self.max_bytes // (1024 * 1024),
                len(dropped),
                len(names) - len(dropped),
            )
