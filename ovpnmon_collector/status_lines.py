"""The line-by-line status parser: every format, every error with its 1-based line number.

``parse_status`` (``ovpnmon_collector.parser``) tries the whole-text fast path first and comes
here for anything it cannot vouch for.
"""

from __future__ import annotations

import datetime as dt
import time

from ovpnmon_collector.snapshot import (
    REQUIRED,
    UNAUTHENTICATED,
    HeldRow,
    IncompleteStatus,
    Layout,
    SessionRow,
    Snapshot,
    StatusError,
    checked,
)

_DATE_FORMATS = ("%Y-%m-%d %H:%M:%S", "%a %b %d %H:%M:%S %Y")


def parse_lines(text: str, local_tz: dt.tzinfo | None) -> Snapshot:
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


def _parse_tagged(lines: list[str], sep: str, version: int, tz: dt.tzinfo | None) -> Snapshot:
    layout: Layout | None = None
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
                layout = Layout(fields[2:], number)
        elif tag == "TIME":
            written = time_field(fields, number, tz)
        # TITLE, ROUTING_TABLE, GLOBAL_STATS, END and tags of newer versions carry nothing we need
    return Snapshot(version, written, tuple(sessions), held=tuple(held))


def _fast_session(fields: list[str], at: Layout, number: int) -> SessionRow | HeldRow | None:
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
    return checked(
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
                missing = [name for name in REQUIRED if name not in columns]
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
    if extra > 0 and sep == "," and name_column < len(columns):
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
    return checked(
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


def time_field(fields: list[str], number: int, tz: dt.tzinfo | None) -> int:
    """The epoch second of a TIME row (time_t column, else the date in ``tz``)."""
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
