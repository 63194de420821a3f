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

from ovpnmon_collector.snapshot import Snapshot
from ovpnmon_collector.status_fast import parse_fast
from ovpnmon_collector.status_lines import parse_lines


def parse_status(text: str, local_tz: dt.tzinfo | None = None) -> Snapshot:
    """Parse a whole status text. ``local_tz`` is the server's zone for dates without a time_t
    (v1); None means this host's local time, which is right when reading a local OpenVPN.
    """
    fast = parse_fast(text, local_tz)
    if fast is not None:
        return fast
    return parse_lines(text, local_tz)
