"""What a status text says, as the accounting reads it: ``Snapshot`` and its rows, the errors
of a text ovpnmon cannot read, and the checks both parsers share (``Layout``, ``checked``)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

UNAUTHENTICATED = "UNDEF"

REQUIRED = ("Common Name", "Real Address", "Bytes Received", "Bytes Sent", "Connected Since")

# The largest integer the database stores (a signed 64-bit integer, in SQLite and PostgreSQL).
MAX_STORED = 2**63 - 1
MAX_DIGITS = len(str(MAX_STORED)) - 1  # numbers with at most this many digits always fit


class StatusError(ValueError):
    """Status text ovpnmon cannot read; ``line`` is the 1-based line it stopped at, if any."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.reason = message
        self.line = line
        super().__init__(f"line {line}: {message}" if line else message)


class IncompleteStatus(StatusError):
    """Text without its final ``END`` line: a half-written file, to be read again next poll."""


class SessionRow(NamedTuple):
    """One authenticated connection as OpenVPN reports it, counters included (a tuple: tens of
    thousands are built every poll)."""

    common_name: str
    real_address: str
    virtual_address: str
    virtual_ipv6: str
    bytes_received: int
    bytes_sent: int
    connected_since: int
    client_id: int | None


class HeldRow(NamedTuple):
    """A session row with a number the database cannot store. Its identity as the accounting
    keys it (Connected Since and Client ID as text) and why it was held."""

    common_name: str
    real_address: str
    connected_since: str
    client_id: str | None
    reason: str


# What the accounting reads of a session: SessionRow's fields in its order, but Connected Since
# (time_t) and Client ID as their decimal text, exactly as str(int) writes them. They only
# identify a session, so the fast path never converts them (two integer columns of 10,000).
Row = tuple[str, str, str, str, int, int, str, str | None]


class Snapshot:
    """What one status text says: its version, when OpenVPN wrote it, and its sessions.

    The fast path hands over its sessions column by column (``columns``: eight lists in
    ``Row``'s order); ``rows()`` walks them as tuples without building a ``SessionRow`` per
    session, and ``sessions`` builds those only when asked for.
    """

    __slots__ = ("_columns", "_sessions", "held", "time", "version")

    def __init__(
        self,
        version: int,
        time: int | None,  # when OpenVPN wrote it (epoch seconds), if it said
        sessions: tuple[SessionRow, ...] = (),
        *,
        columns: tuple[list[Any], ...] | None = None,
        held: tuple[HeldRow, ...] = (),
    ) -> None:
        self.version = version
        self.time = time
        self._sessions: tuple[SessionRow, ...] | None = sessions if columns is None else None
        self._columns = columns
        self.held = held

    @property
    def sessions(self) -> tuple[SessionRow, ...]:
        """Every session as a ``SessionRow`` (built on first use)."""
        if self._sessions is None:
            assert self._columns is not None
            self._sessions = tuple(
                SessionRow(name, real, v4, v6, rx, tx, int(since), None if c is None else int(c))
                for name, real, v4, v6, rx, tx, since, c in zip(*self._columns, strict=True)
            )
        return self._sessions

    def rows(self) -> Iterator[Row]:
        """Every session as a ``Row``: what the accounting reads."""
        if self._columns is not None:
            return zip(*self._columns, strict=True)
        return (
            (name, real, v4, v6, rx, tx, str(since), None if c is None else str(c))
            for name, real, v4, v6, rx, tx, since, c in self.sessions
        )

    def counter_columns(self) -> tuple[list[int], list[int]] | None:
        """Bytes received and sent of every session in ``rows()`` order, if the fast path gave
        them as columns (lists the caller must not change), else None."""
        if self._columns is None:
            return None
        return self._columns[4], self._columns[5]

    def __len__(self) -> int:
        return len(self._columns[0]) if self._columns is not None else len(self.sessions)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Snapshot):
            return NotImplemented
        mine = (self.version, self.time, self.sessions, self.held)
        return mine == (other.version, other.time, other.sessions, other.held)

    __hash__ = None  # type: ignore[assignment]  # mutable cache inside: not hashable

    def __repr__(self) -> str:
        return (
            f"Snapshot(version={self.version!r}, time={self.time!r}, "
            f"sessions={self.sessions!r}, held={self.held!r})"
        )


class Layout:
    """Where each needed column sits in a CLIENT_LIST row, from its HEADER (offset by the tag)."""

    def __init__(self, columns: list[str], number: int) -> None:
        missing = [name for name in REQUIRED if name not in columns]
        if missing:
            raise StatusError(f"CLIENT_LIST header lacks {', '.join(missing)}", number)
        at = {name: index + 1 for index, name in enumerate(columns)}
        self.columns = columns
        self.width = len(columns) + 1
        self.name = at["Common Name"]
        self.real = at["Real Address"]
        self.v4 = at.get("Virtual Address")
        self.v6 = at.get("Virtual IPv6 Address")
        self.rx = at["Bytes Received"]
        self.tx = at["Bytes Sent"]
        self.since_t = at.get("Connected Since (time_t)")
        self.client_id = at.get("Client ID")


def checked(row: SessionRow) -> SessionRow | HeldRow:
    """``row``, or a ``HeldRow`` if one of its numbers is more than the database stores."""
    for value, what in (
        (row.bytes_received, "Bytes Received"),
        (row.bytes_sent, "Bytes Sent"),
        (row.connected_since, "Connected Since"),
    ):
        if value > MAX_STORED:
            cid = None if row.client_id is None else str(row.client_id)
            reason = f"{what} {value} is more than ovpnmon can store (2^63 - 1)"
            return HeldRow(row.common_name, row.real_address, str(row.connected_since), cid, reason)
    return row
