"""OpenVPN server status text -> ``Snapshot``: a pure function, no I/O.

Handles ``status-version`` 1 (CSV with section titles), 2 (CSV with HEADER rows) and 3 (TABs, also
what the management interface's ``status 3`` prints), auto-detected from the first line. Columns are
found by the HEADER's names, so columns added by newer OpenVPN versions do no harm.

Errors: ``IncompleteStatus`` when the text has no final ``END`` (a file truncated, or caught
being written) and ``StatusError`` for anything else malformed, always with the 1-based line
number. Nothing else escapes ``parse_status``. A well-formed row whose numbers the database
cannot store (a counter or a Connected Since of 2^63 or more) is not an error of the whole text:
it comes back in ``Snapshot.held``, and the accounting keeps that session as it was.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from typing import Any, NamedTuple

UNAUTHENTICATED = "UNDEF"

_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%a %b %d %H:%M:%S %Y")

_LEADING_ZERO = re.compile(r"\t0[0-9]")

_REQUIRED = ("Common Name", "Real Address", "Bytes Received", "Bytes Sent", "Connected Since")

# The largest integer the database stores (a signed 64-bit integer, in SQLite and PostgreSQL).
MAX_STORED = 2**63 - 1
_MAX_DIGITS = len(str(MAX_STORED)) - 1  # numbers with at most this many digits always fit


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

    @property
    def key(self) -> str:
        """Identity within a source, together with ``connected_since`` (never the CN alone)."""
        return session_key(self.client_id, self.real_address)


class HeldRow(NamedTuple):
    """A session row with a number the database cannot store. Its identity as the accounting
    keys it (Connected Since and Client ID as text) and why it was held."""

    common_name: str
    real_address: str
    connected_since: str
    client_id: str | None
    reason: str


def session_key(client_id: int | str | None, real_address: str) -> str:
    """A session's key as the ``sessions`` table stores it: "id:<Client ID>" when OpenVPN gives
    one, else "addr:<Real Address>" (status-version 1). ``client_id`` as an int or its text."""
    if client_id is not None:
        return f"id:{client_id}"
    return f"addr:{real_address}"


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


def parse_status(text: str, local_tz: dt.tzinfo | None = None) -> Snapshot:
    """Parse a whole status text. ``local_tz`` is the server's zone for dates without a time_t
    (v1); None means this host's local time, which is right when reading a local OpenVPN.
    """
    fast = _parse_tagged_fast(text, local_tz)
    if fast is not None:
        return fast
    return _parse_lines(text, local_tz)


def _parse_lines(text: str, local_tz: dt.tzinfo | None) -> Snapshot:
    """The general path: every format, every error with its line number."""
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise IncompleteStatus("empty status text", 1)
    first = lines[0].strip()
    if first.startswith("OpenVPN STATISTICS"):
        raise StatusError("this is an OpenVPN client's status file, not a server's", 1)
    if lines[-1].strip() != "END":
        raise IncompleteStatus(
            f"no final END line after {len(lines)} lines: the file is incomplete "
            "(being rewritten, or truncated)",
            len(lines),
        )
    if first == "OpenVPN CLIENT LIST":
        return _parse_v1(lines, local_tz)
    if first.startswith("TITLE\t"):
        return _parse_tagged(lines, "\t", 3, local_tz)
    if first.startswith("TITLE,"):
        return _parse_tagged(lines, ",", 2, local_tz)
    raise StatusError(
        "not an OpenVPN server status: the first line should be 'OpenVPN CLIENT LIST' "
        "(status-version 1) or start with TITLE (status-version 2 and 3)",
        1,
    )


class _Layout:
    """Where each needed column sits in a CLIENT_LIST row, from its HEADER (offset by the tag)."""

    def __init__(self, columns: list[str], number: int) -> None:
        missing = [name for name in _REQUIRED if name not in columns]
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


def _parse_tagged(lines: list[str], sep: str, version: int, tz: dt.tzinfo | None) -> Snapshot:
    layout: _Layout | None = None
    written: int | None = None
    sessions: list[SessionRow] = []
    held: list[HeldRow] = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        fields = line.rstrip("\r").split(sep)
        tag = fields[0]
        if tag == "CLIENT_LIST":
            if layout is None:
                raise StatusError("CLIENT_LIST row before its HEADER,CLIENT_LIST row", number)
            if len(fields) == layout.width and layout.since_t is not None:
                session = _fast_session(fields, layout, number)
            else:  # v2 with a comma in a name, or a header without time_t: the general path
                session = _session(_row(layout.columns, fields[1:], sep, number), number, tz)
            if isinstance(session, HeldRow):
                held.append(session)
            elif session is not None:
                sessions.append(session)
        elif tag == "HEADER":
            if len(fields) > 2 and fields[1] == "CLIENT_LIST":
                layout = _Layout(fields[2:], number)
        elif tag == "TIME":
            written = _time_field(fields, number, tz)
        # TITLE, ROUTING_TABLE, GLOBAL_STATS, END and tags of newer versions carry nothing we need
    return Snapshot(version, written, tuple(sessions), held=tuple(held))


# Characters ``str.splitlines`` breaks lines at, besides "\n": text holding any of them takes the
# line-by-line path, so both paths see the same lines.
_ASCII_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e")
_OTHER_BREAKS = ("\x85", "\u2028", "\u2029")


def _parse_tagged_fast(text: str, tz: dt.tzinfo | None) -> Snapshot | None:
    """The whole of a well-formed status-version 2/3 text in a few C-speed passes, or None.

    It finds the few lines it needs with ``str.find`` and splits only the client rows, and answers
    only when it can vouch that the line-by-line parser would give the same snapshot: one
    client-list header (with the time_t column) before every client row, at most one TIME row,
    plain "\n" line ends, a final END, client rows in one block, each with exactly the header's
    fields and whole numbers where numbers belong. Anything else, every error included, is left to
    the line-by-line parser, which knows line numbers. tests/test_parser.py holds both to the
    same answers.
    """
    if text.startswith("TITLE\t"):
        sep, version = "\t", 3
    elif text.startswith("TITLE,"):
        sep, version = ",", 2
    else:
        return None
    # (the tail only: rstrip() of the whole text would copy megabytes; more than a page of
    # trailing blanks is left to the line-by-line parser)
    if not text[-4096:].rstrip().endswith("\nEND") or any(ch in text for ch in _ASCII_BREAKS):
        return None
    if not text.isascii() and any(ch in text for ch in _OTHER_BREAKS):
        return None
    # Client rows must form one block (checked by _client_rows): no other line can sit inside
    # it, so the header and TIME rows are looked for only around it.
    tag = f"\nCLIENT_LIST{sep}"
    first = text.find(tag)
    if first >= 0:
        around = (first, text.index("\n", text.rfind(tag) + 1))
    else:
        around = (len(text), len(text))
    marker = f"\nHEADER{sep}CLIENT_LIST{sep}"
    header_at = _only(text, marker, around)
    time_at = _only(text, f"\nTIME{sep}", around)
    if header_at is None or header_at < 0 or header_at > around[0] or time_at is None:
        return None
    start = header_at + len(marker)
    columns = text[start : text.index("\n", start)].split(sep)
    written: int | None = None
    try:
        layout = _Layout(columns, 0)
        if time_at >= 0:
            line = text[time_at + 1 : text.index("\n", time_at + 1)]
            written = _time_field(line.split(sep), 0, tz)
    except StatusError:
        return None
    if layout.since_t is None:
        return None
    if first < 0:
        return Snapshot(version, written, ())
    found = _client_rows(text[around[0] + 1 : around[1]], sep, layout)
    return None if found is None else Snapshot(version, written, columns=found)


def _only(text: str, needle: str, around: tuple[int, int]) -> int | None:
    """Where ``needle`` occurs outside ``text[around[0]:around[1]]``: -1 if nowhere, None if more
    than once."""
    hits = []
    for start, end in ((0, around[0]), (around[1], len(text))):
        at = text.find(needle, start, end)
        if at >= 0:
            if text.find(needle, at + 1, end) >= 0:
                return None
            hits.append(at)
    if len(hits) > 1:
        return None
    return hits[0] if hits else -1


def _client_rows(block: str, sep: str, at: _Layout) -> tuple[list[Any], ...] | None:
    """The sessions of a block of CLIENT_LIST lines, column by column in ``Row``'s order (the
    counters as integers, Connected Since and Client ID as text), if each line is an exact row,
    else None.

    Column-wise, so that the per-row work happens in C: the block is split into one flat list of
    fields and each column is a slice of it. If no field but a line's first starts with the tag,
    and the tags sit every ``width`` fields, every line is a client row of exactly ``width``
    fields.
    """
    rows = block.count("\n") + 1
    bare = "CLIENT_LIST"
    width = at.width
    flat = block.replace("\n", sep).split(sep)
    if (
        len(flat) != rows * width
        or flat[0::width].count(bare) != rows
        # a field anywhere but at the start of a line that is (or starts like) the tag
        or sep + bare in block
    ):
        return None

    def column(index: int | None) -> list[Any]:
        return flat[index::width] if index is not None else [""] * rows

    names = column(at.name)
    keep = None
    if UNAUTHENTICATED in names:
        keep = [i for i, name in enumerate(names) if name != UNAUTHENTICATED]
        if not keep:
            return tuple([] for _ in SessionRow._fields)
    assert at.since_t is not None
    columns = [names, *(column(i) for i in (at.real, at.v4, at.v6, at.rx, at.tx, at.since_t))]
    ids = column(at.client_id)
    if keep is not None:
        columns = [[values[i] for i in keep] for values in columns]
        ids = [ids[i] for i in keep]
    numbers = columns[4:]
    # Whole numbers, as _fast_session checks them: none empty (but the Client ID), and nothing
    # but ASCII digits in all of them together (int() alone takes signs, spaces, "_", other
    # scripts' digits). bytes.isdigit is that test, ten times faster than str.isdigit.
    digits = "".join("".join(values) for values in (*numbers, ids))
    if not all(map(all, numbers)) or not digits.isascii() or not digits.encode().isdigit():
        return None
    since = numbers[2]
    # Connected Since and Client ID stay text (see Row): as str(int) would write them, so no
    # leading zeros ("07"), whichever path parsed the file.
    if _LEADING_ZERO.search("\t".join(["", *since, *ids])):
        return None
    received, sent = list(map(int, numbers[0])), list(map(int, numbers[1]))
    # a number the database cannot store holds its row back: the line-by-line path does that
    if max(received) > MAX_STORED or max(sent) > MAX_STORED or max(map(len, since)) > _MAX_DIGITS:
        return None
    return (
        *columns[:4],
        received,
        sent,
        since,
        ids if all(ids) else [c or None for c in ids],
    )


def _fast_session(fields: list[str], at: _Layout, number: int) -> SessionRow | HeldRow | None:
    """``_session`` for a row that matches its header exactly (nearly every row): no dict."""
    name = fields[at.name]
    if name == UNAUTHENTICATED:
        return None
    rx, tx, since = fields[at.rx], fields[at.tx], fields[at.since_t]  # type: ignore[index]
    cid = fields[at.client_id] if at.client_id is not None else ""
    if (
        not (rx.isdigit() and tx.isdigit() and since.isdigit() and (cid == "" or cid.isdigit()))
        or not (rx + tx + since + cid).isascii()
    ):
        _integer(rx, "Bytes Received", number)
        _integer(tx, "Bytes Sent", number)
        _integer(since, "Connected Since (time_t)", number)
        _integer(cid, "Client ID", number)
    return _checked(
        SessionRow(
            name,
            fields[at.real],
            fields[at.v4] if at.v4 is not None else "",
            fields[at.v6] if at.v6 is not None else "",
            int(rx),
            int(tx),
            int(since),
            int(cid) if cid else None,
        )
    )


def _checked(row: SessionRow) -> SessionRow | HeldRow:
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


def _parse_v1(lines: list[str], tz: dt.tzinfo | None) -> Snapshot:
    written: int | None = None
    section = "title"
    columns: list[str] | None = None
    route_columns: list[str] | None = None
    rows: list[tuple[int, dict[str, str]]] = []
    routes: dict[tuple[str, str], list[str]] = {}
    for number, line in enumerate(lines, 1):
        text = line.rstrip("\r")
        if number == 1 or not text:
            continue
        if text == "ROUTING TABLE":
            section = "routes"
            continue
        if text in ("GLOBAL STATS", "END"):
            section = "global"
            continue
        fields = text.split(",")
        if section == "title":
            if fields[0] == "Updated" and len(fields) >= 2:
                written = _date(",".join(fields[1:]), number, tz)
            elif fields[0] == "Common Name":
                columns = fields
                missing = [name for name in _REQUIRED if name not in columns]
                if missing:
                    raise StatusError(f"client list header lacks {', '.join(missing)}", number)
                section = "clients"
            else:
                raise StatusError(
                    f"unexpected line before the client list header: {text!r}", number
                )
        elif section == "clients":
            assert columns is not None
            rows.append((number, _row(columns, fields, ",", number)))
        elif section == "routes":
            if route_columns is None:
                route_columns = fields
                continue
            route = _row(route_columns, fields, ",", number, name_column=1)
            key = (route.get("Common Name", ""), route.get("Real Address", ""))
            routes.setdefault(key, []).append(route.get("Virtual Address", ""))
    if columns is None:
        raise StatusError("no 'Common Name,...' client list header", None)
    sessions: list[SessionRow] = []
    held: list[HeldRow] = []
    for number, row in rows:
        addresses = routes.get((row["Common Name"], row["Real Address"]), [])
        row["Virtual Address"] = next((a for a in addresses if _is_ipv4(a)), "")
        row["Virtual IPv6 Address"] = next((a for a in addresses if ":" in a and "/" not in a), "")
        session = _session(row, number, tz)
        if isinstance(session, HeldRow):
            held.append(session)
        elif session is not None:
            sessions.append(session)
    return Snapshot(1, written, tuple(sessions), held=tuple(held))


def _row(
    columns: list[str], values: list[str], sep: str, number: int, name_column: int = 0
) -> dict[str, str]:
    extra = len(values) - len(columns)
    if extra > 0 and sep == ",":
        # A comma inside the common name: the CSV formats do not quote it. v3 (TABs) is exact.
        values = [
            *values[:name_column],
            sep.join(values[name_column : name_column + extra + 1]),
            *values[name_column + extra + 1 :],
        ]
    elif extra != 0:
        raise StatusError(f"{len(values)} fields where the header names {len(columns)}", number)
    return dict(zip(columns, values, strict=True))


def _session(row: dict[str, str], number: int, tz: dt.tzinfo | None) -> SessionRow | HeldRow | None:
    name = row["Common Name"]
    if name == UNAUTHENTICATED:
        return None
    since_t = row.get("Connected Since (time_t)")
    if since_t:
        connected = _integer(since_t, "Connected Since (time_t)", number)
    else:
        connected = _date(row["Connected Since"], number, tz)
    client_id = row.get("Client ID")
    return _checked(
        SessionRow(
            common_name=name,
            real_address=row["Real Address"],
            virtual_address=row.get("Virtual Address", ""),
            virtual_ipv6=row.get("Virtual IPv6 Address", ""),
            bytes_received=_integer(row["Bytes Received"], "Bytes Received", number),
            bytes_sent=_integer(row["Bytes Sent"], "Bytes Sent", number),
            connected_since=connected,
            client_id=_integer(client_id, "Client ID", number) if client_id else None,
        )
    )


def _integer(text: str, what: str, number: int) -> int:
    if not text.isdigit() or not text.isascii():
        raise StatusError(f"{what} is not a whole number: {text!r}", number)
    return int(text)


def _time_field(fields: list[str], number: int, tz: dt.tzinfo | None) -> int:
    if len(fields) >= 3 and fields[2]:
        return _integer(fields[2], "TIME (time_t)", number)
    if len(fields) >= 2:
        return _date(fields[1], number, tz)
    raise StatusError("TIME row without a time", number)


def _date(text: str, number: int, tz: dt.tzinfo | None) -> int:
    for fmt in _DATE_FORMATS:
        try:
            parsed = dt.datetime.strptime(text.strip(), fmt)
        except ValueError:
            continue
        if tz is None:
            return int(time.mktime(parsed.timetuple()))
        return int(parsed.replace(tzinfo=tz).timestamp())
    raise StatusError(
        f"unrecognised date {text!r}: expected 'YYYY-MM-DD HH:MM:SS' or 'Thu Nov 26 03:23:05 2026'",
        number,
    )


def _is_ipv4(text: str) -> bool:
    parts = text.split(".")
    return len(parts) == 4 and all(part.isdigit() for part in parts)
