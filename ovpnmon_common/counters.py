"""Open sessions' counters, packed: how the collector stores them every poll and the API reads them.

Storing OpenVPN's counters of every open session every poll is what makes a restart exact, and
one ``UPDATE`` per session per poll was the biggest cost of a poll of 10,000 sessions. Instead,
each source's counters are one value of the ``session_counters`` table, rewritten in the poll's
transaction: three little-endian signed 64-bit arrays of equal length — session ids (the
``sessions`` table's ``id``), bytes received, bytes sent — in no particular order. A session of
the source with no entry here keeps the counters its ``sessions`` row holds (written when it
opened and when it closed).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable, Iterator

_LITTLE = sys.byteorder == "little"


def pack(ids: Iterable[int], received: Iterable[int], sent: Iterable[int]) -> bytes:
    """Three equal-length columns -> one value for ``session_counters.counters``."""
    parts = [array("q", ids), array("q", received), array("q", sent)]
    if not len(parts[0]) == len(parts[1]) == len(parts[2]):
        raise ValueError("ids, received and sent must have the same length")
    if not _LITTLE:  # pragma: no cover - every platform ovpnmon runs on is little-endian today
        for part in parts:
            part.byteswap()
    return b"".join(part.tobytes() for part in parts)


class Counters:
    """One source's packed counters, readable by session id."""

    __slots__ = ("ids", "received", "sent")

    def __init__(self, data: bytes) -> None:
        if len(data) % 24:
            raise ValueError(f"packed counters of {len(data)} bytes: not a multiple of 24")
        third = len(data) // 3
        columns = []
        for start in (0, third, 2 * third):
            column = array("q")
            column.frombytes(data[start : start + third])
            if not _LITTLE:  # pragma: no cover
                column.byteswap()
            columns.append(column)
        self.ids, self.received, self.sent = columns

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, session_id: int) -> tuple[int, int] | None:
        """(bytes received, bytes sent) of one session, or None if it has no entry."""
        try:
            at = self.ids.index(session_id)
        except ValueError:
            return None
        return self.received[at], self.sent[at]

    def lookup(self, session_ids: Iterable[int]) -> dict[int, tuple[int, int]]:
        """(bytes received, bytes sent) of each of ``session_ids`` that has an entry: one pass
        over the entries however many are asked (``get`` scans them once per call)."""
        wanted = set(session_ids)
        if len(wanted) <= 4:
            return {sid: value for sid in wanted if (value := self.get(sid)) is not None}
        return {
            sid: (rx, tx)
            for sid, rx, tx in zip(self.ids, self.received, self.sent, strict=True)
            if sid in wanted
        }

    def items(self) -> Iterator[tuple[int, tuple[int, int]]]:
        """(session id, (bytes received, bytes sent)) for every entry."""
        return zip(self.ids, zip(self.received, self.sent, strict=True), strict=True)
