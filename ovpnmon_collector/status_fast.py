"""The whole-text fast path of the status parser: a well-formed status-version 2/3 text in a
few C-speed passes, or None for the line-by-line parser (``status_lines``) to take."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from ovpnmon_collector.snapshot import (
    MAX_DIGITS,
    MAX_STORED,
    UNAUTHENTICATED,
    Layout,
    SessionRow,
    Snapshot,
    StatusError,
)
from ovpnmon_collector.status_lines import time_field

_LEADING_ZERO = re.compile(r"\t0[0-9]")


# Characters ``str.splitlines`` breaks lines at, besides "\n": text holding any of them takes the
# line-by-line path, so both paths see the same lines.
_ASCII_BREAKS = ("\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e")
_OTHER_BREAKS = ("\x85", "\u2028", "\u2029")


def parse_fast(text: str, tz: dt.tzinfo | None) -> Snapshot | None:
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
        layout = Layout(columns, 0)
        if time_at >= 0:
            line = text[time_at + 1 : text.index("\n", time_at + 1)]
            written = time_field(line.split(sep), 0, tz)
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


def _client_rows(block: str, sep: str, at: Layout) -> tuple[list[Any], ...] | None:
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
    if max(received) > MAX_STORED or max(sent) > MAX_STORED or max(map(len, since)) > MAX_DIGITS:
        return None
    return (
        *columns[:4],
        received,
        sent,
        since,
        ids if all(ids) else [c or None for c in ids],
    )
