"""CSV bodies (RFC 4180) and the keyset cursors of paged endpoints.

CSV: a header row, CRLF line ends, fields quoted where RFC 4180 needs it, UTF-8. A text cell
that a spreadsheet would run as a formula (it starts with ``=``, ``+``, ``-``, ``@``, a tab or
a carriage return: a common name can be anything) is written with a leading ``'``, OWASP's
advice, so Excel, LibreOffice and Google Sheets show it as text. Numbers are written as they
are (byte counts are never negative).

Cursors: ``position`` (the last row's sort key) with a checksum over it and the request's
filters, base64url. The checksum is not a secret — a cursor grants nothing a query could not
ask for — it tells an edited, truncated or foreign cursor (from other filters) apart from a
real one, so paging never silently skips or repeats rows.
"""

from __future__ import annotations

import base64
import binascii
import csv
import hashlib
import hmac
import io
from collections.abc import Iterable, Sequence
from typing import Any

from ovpnmon_common.planner import InvalidQuery

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def cell(value: Any) -> Any:
    """One CSV field: None as empty, text that would start a formula with a leading ``'``."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def render_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """RFC 4180 text of ``header`` and ``rows``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(header)
    writer.writerows([cell(value) for value in row] for row in rows)
    return out.getvalue().encode()


_KEY = b"ovpnmon cursor v1"


class InvalidCursor(InvalidQuery):
    """A cursor that is not one this API handed out for these filters."""


def _digest(position: Sequence[int], scope: str) -> str:
    text = ".".join(map(str, position)) + "|" + scope
    return hmac.new(_KEY, text.encode(), hashlib.sha256).hexdigest()[:16]


def encode_cursor(position: Sequence[int], scope: str) -> str:
    """A cursor continuing after ``position`` for requests whose filters render as ``scope``."""
    text = ".".join(map(str, position)) + "." + _digest(position, scope)
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(cursor: str, scope: str, length: int) -> tuple[int, ...]:
    """The position ``cursor`` holds; ``InvalidCursor`` unless ``encode_cursor`` made it for
    ``scope``."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        text = base64.urlsafe_b64decode(padded.encode("ascii")).decode("ascii")
        *numbers, digest = text.split(".")
        position = tuple(int(n) for n in numbers)
    except (ValueError, UnicodeError, binascii.Error):
        position, digest = (), ""
    if len(position) != length or not hmac.compare_digest(digest, _digest(position, scope)):
        raise InvalidCursor(
            "cursor is not one this API returned for these filters: pass next_cursor from the "
            "previous page unchanged, with the same filters, or leave cursor out for the first page"
        )
    return position
