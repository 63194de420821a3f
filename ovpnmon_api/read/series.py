"""Traffic over time: one client's buckets, the whole server's, the top clients of a range.

A tier is read up to its rollup watermark (and the 15-minute tier through its bucket in progress,
summed up to its open mark), the rest from the next finer tier, down to raw samples
(``_pieces``), so every series includes the bucket in progress. Which tier a query
starts from is the planner's choice (``ovpnmon_common.planner``), made once.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from functools import lru_cache
from itertools import accumulate
from typing import Any

from sqlalchemy import Connection, bindparam, func, select, union_all

from ovpnmon_common import packed, schema
from ovpnmon_common.buckets import DAY, align, align_up, month_start, next_month
from ovpnmon_common.meta import CollectorStatus
from ovpnmon_common.planner import Series
from ovpnmon_common.storage.statements import Prepared, plain_rows, total
from ovpnmon_common.tiers import BY_NAME, MONTHLY, OPEN, TIERS, Tier, in_progress, sql_align

c, u, g, p = schema.clients, schema.usage_history, schema.global_history, schema.usage_packed

Sums = dict[int, list[int]]  # bucket -> [bytes received, bytes sent] (+ [peak active])


def _pieces(
    status: CollectorStatus, tier: Tier, start: int, end: int
) -> Iterator[tuple[Tier, int, int]]:
    """``[start, end)`` as (tier, start, end) pieces: whole tier buckets before the tier's
    watermark from the tier's table, the rest (edges and the buckets not yet final) from the
    next finer tier, down to raw samples. A tier that sums its bucket in progress (up to its
    open mark) gives that bucket too when the range holds all of it before the mark: its piece
    then ends after the bucket (the bucket itself a piece of its own table, ``in_progress``,
    where it has one), and the finer tier's starts at the mark."""
    if start >= end:
        return
    if tier.width is None or tier.built_from is None:
        yield tier, start, end
        return
    width = tier.width
    first = align_up(start, width)  # the first whole bucket inside the range
    final = min(status.watermarks.get(tier.name, first), align(end, width))
    held, rest = final, max(final, start)  # the tier's piece ends at held; finer data from rest
    summed = status.open_until(tier.name, width)
    if summed is not None and first <= final and summed <= end:
        # (the mark is after the watermark, so the range reaches the bucket in progress)
        held, rest = final + width, summed
    if first < held:
        opened = in_progress(tier)
        if opened is not tier and held > final:  # the bucket in progress from its own table
            if first < final:
                yield tier, first, final
            yield opened, final, held
        else:
            yield tier, first, held
    else:
        first = rest = start
    finer = BY_NAME[tier.built_from]
    yield from _pieces(status, finer, start, first)
    yield from _pieces(status, finer, rest, end)


DAILY = BY_NAME["daily"]
# Each per-client tier's buckets subtracted from a coarser row: a piece of these is summed
# negated (``_fewer_rows``, ``_with_months``).
TAKEN = {
    tier.name: replace(tier, name=f"{tier.name}_taken")
    for tier in TIERS
    if tier.per_client and not tier.raw
}
DAYS_TAKEN = TAKEN[DAILY.name]
# the tiers a sum may read: the registry's, the months kept beside its days, and those taken
_SUMMED = {
    **BY_NAME,
    MONTHLY.name: MONTHLY,
    **{t.name: t for t in (*TAKEN.values(), *OPEN.values())},
}
_NEGATED = frozenset(t.name for t in TAKEN.values())
_OPENED = frozenset(t.name for t in OPEN.values())
# The coarse tiers whose final buckets may stand for the finer pieces inside them.
_WHOLE = tuple(BY_NAME[name] for name in ("daily", "six_hour", "hourly"))


def _rows(tier: Tier, start: int, end: int) -> int:
    """About how many rows a client has in a piece: one per bucket; raw samples, many."""
    if tier.raw or tier.width is None:
        return 1 << 30
    return max(1, (end - start) // tier.width)


def _fewer_rows(
    status: CollectorStatus, parts: list[tuple[Tier, int, int]]
) -> list[tuple[Tier, int, int]]:
    """``parts`` where a final bucket of a coarse tier, less the finer pieces of it outside the
    range, reads fewer rows than the finer pieces inside it: the 24 hours from 12:15 are
    yesterday's day less its first two 6-hour buckets and a quarter of an hour (four rows per
    client), not a 6-hour bucket, five hours and three quarters (nine). Only where the part left
    out is held by tiers (no raw samples, nothing pruned), so the difference is exact."""
    parts = sorted(parts, key=lambda part: (part[1], part[2]))
    for coarse in _WHOLE:
        width = coarse.width
        assert width is not None
        final = status.watermarks.get(coarse.name)
        if final is None:
            continue
        parts = _split(parts, width, final)
        # the latest end of the positive pieces before each (they are in time order)
        ends = list(accumulate((p[2] if p[0].name not in _NEGATED else 0 for p in parts), max))
        done: list[tuple[Tier, int, int]] = []
        i = 0
        while i < len(parts):
            bucket = align(parts[i][1], width)
            inside = []
            j = i
            while j < len(parts) and parts[j][1] >= bucket and parts[j][2] <= bucket + width:
                inside.append(parts[j])
                j += 1
            # the range has nothing else in the bucket: no piece before ends in it, none after
            # starts in it (the bucket's parts outside ``inside`` are outside the range)
            alone = (i == 0 or ends[i - 1] <= bucket) and (
                j == len(parts) or parts[j][1] >= bucket + width
            )
            left_out = _left_out(status, coarse, bucket, inside) if inside and alone else None
            if (
                left_out is not None
                and bucket + width <= final
                and bucket >= status.pruned.get(coarse.name, bucket)
                and 1 + sum(_rows(*p) for p in left_out) < sum(_rows(*p) for p in inside)
            ):
                done.append((coarse, bucket, bucket + width))
                done += [(TAKEN[t.name], s, e) for t, s, e in left_out]
                i = j
            else:
                done.append(parts[i])
                i += 1
        parts = _joined(done)
    return parts


def _split(
    parts: list[tuple[Tier, int, int]], width: int, until: int
) -> list[tuple[Tier, int, int]]:
    """``parts`` finer than ``width`` cut at its every multiple up to ``until`` (a coarser
    tier's bucket edges, which are edges of every finer tier's buckets too, as far as its
    final buckets go: a month in progress is not hundreds of hourly pieces of the days to
    come)."""
    cut = []
    for tier, start, end in parts:
        while (tier.width or 0) < width and align(start, width) + width < min(end, until + 1):
            edge = align(start, width) + width
            cut.append((tier, start, edge))
            start = edge
        cut.append((tier, start, end))
    return cut


def _joined(parts: list[tuple[Tier, int, int]]) -> list[tuple[Tier, int, int]]:
    """``parts`` with pieces of one tier that meet made one again, in time order."""
    joined: list[tuple[Tier, int, int]] = []
    for tier, start, end in sorted(parts, key=lambda part: (part[0].name, part[1])):
        if joined and joined[-1][0] is tier and joined[-1][2] == start:
            joined[-1] = (tier, joined[-1][1], end)
        else:
            joined.append((tier, start, end))
    return sorted(joined, key=lambda part: (part[1], part[2]))


def _left_out(
    status: CollectorStatus, coarse: Tier, bucket: int, inside: list[tuple[Tier, int, int]]
) -> list[tuple[Tier, int, int]] | None:
    """The pieces of ``coarse``'s ``bucket`` that ``inside`` (finer, positive pieces in time
    order, within the bucket) does not cover, from the finer tiers; None where they cannot
    stand in: a piece inside is not finer or is subtracted, or a part left out needs raw
    samples or pruned rows."""
    width = coarse.width or 0
    if any(t.name in _NEGATED or (t.width or 0) >= width for t, _, _ in inside):
        return None
    assert coarse.built_from is not None
    finer = BY_NAME[coarse.built_from]
    gaps, at = [], bucket
    for _, start, end in inside:
        if start > at:
            gaps.append((at, start))
        at = max(at, end)
    if at < bucket + width:
        gaps.append((at, bucket + width))
    out = [piece for first, last in gaps for piece in _pieces(status, finer, first, last)]
    for tier, start, _ in out:
        if tier.raw or start < status.pruned.get(tier.name, start):
            return None
    return out


def _with_months(
    status: CollectorStatus, parts: list[tuple[Tier, int, int]]
) -> Iterator[tuple[Tier, int, int]]:
    """``parts`` with the calendar months of their daily pieces read from ``stats_monthly`` where
    that reads fewer rows. A month's row sums every day stored of it (all days before the daily
    watermark, and the day in progress where the daily tier sums it: there are none after), so
    the days of a month that a piece covers are its row minus the stored days it does not cover
    (``DAYS_TAKEN``): a 30-day range from the 3rd is a month row and two days taken, three rows
    per client instead of 28; a range ending today before the day's open mark takes today's
    row out of the month's too.

    Not a case of ``_fewer_rows``, though it is the same idea (a coarse row less the finer
    pieces left out): that one stands a coarse tier's *final* bucket of fixed width in for
    what the range holds of it. A month is of no fixed width, and the month in progress is
    read too, since its row holds exactly the days stored so far. ``_fewer_rows`` reads final
    buckets only: what a range leaves out of a bucket in progress would reach the raw samples
    after its open mark, which it never subtracts."""
    held = status.watermarks.get(DAILY.name)
    if held is not None and status.open_until(DAILY.name, DAY) is not None:
        held += DAY  # the day in progress is stored, summed up to its mark
    for tier, start, end in parts:
        if tier is not DAILY or held is None:
            yield tier, start, end
            continue
        month = month_start(start)
        while month < end:
            after = next_month(month)
            first, last, stored = max(start, month), min(end, after), min(after, held)
            covered = (last - first) // DAY
            missing = (first - month + stored - min(last, stored)) // DAY
            if missing == 0 or 1 + missing < covered:
                yield MONTHLY, month, month + 1  # the month's one row
                if month < first:
                    yield DAYS_TAKEN, month, first
                if last < stored:
                    yield DAYS_TAKEN, last, stored
            else:
                yield DAILY, first, last
            month = after


def _signed(value: Any, negated: bool) -> Any:
    """``value``, negated in a piece subtracted from a coarser row (``TAKEN``)."""
    return -value if negated else value


def _window(tier: Tier) -> list[Any]:
    return [tier.time >= bindparam("start"), tier.time < bindparam("end")]


def _server_sums(tier: Tier, hosted: bool) -> Prepared:
    """Each host's bytes and peak of concurrent clients, grouped by ``step`` bucket (of host
    ``host_id`` only if ``hosted``)."""
    table = tier.table
    key = sql_align(tier.time, bindparam("step")).label("key")
    peak = table.c.active_count if tier.raw else table.c.max_active
    where = _window(tier)
    if hosted:
        where.append(table.c.host_id == bindparam("host_id"))
    return Prepared(
        select(
            key,
            table.c.host_id,
            total(table.c.bytes_received),
            total(table.c.bytes_sent),
            func.max(peak),
        )
        .where(*where)
        .group_by(key, table.c.host_id)
    )


SERVER_SUMS = {
    (tier.name, hosted): _server_sums(tier, hosted)
    for tier in TIERS
    if not tier.per_client
    for hosted in (False, True)
}


def client_series(
    conn: Connection,
    status: CollectorStatus,
    common_name: str,
    host_id: int | None,
    series: Series,
) -> Sums:
    """Per bucket of ``series``: the bytes of the client called ``common_name`` on every host
    (or on ``host_id``), from its tier and the finer data after it. Buckets without a byte are
    absent (the body fills them). One statement for every piece and host (on PostgreSQL each
    statement is a round trip)."""
    assert series.step is not None
    parts = list(_pieces(status, series.tier, series.start, series.end))
    if not parts:
        return {}
    out: Sums = defaultdict(lambda: [0, 0])
    names = tuple(tier.name for tier, _, _ in parts)
    statement = _client_series_statement(names, host_id is not None)
    params = {"name": common_name, "host_id": host_id, "step": series.step}
    for key, rx, tx in statement(conn, **params, **_piece_params(parts)):
        entry = out[key]  # a bucket may span two pieces: summed here
        entry[0] += rx
        entry[1] += tx
    for _, ts, rx, tx in _named_packed(conn, status, common_name, host_id, parts):
        entry = out[ts - ts % series.step]
        entry[0] += rx
        entry[1] += tx
    return out


# Raw samples of final 15-minute buckets are packed (``ovpnmon_collector.pack``): a raw piece
# that starts before where packing has got to reads the packed buckets too, unpacked here.
def _packed_windows(
    status: CollectorStatus, parts: list[tuple[Tier, int, int]]
) -> list[tuple[int, int]]:
    """The ``[start, end)`` of the raw pieces of ``parts`` that packed buckets may hold."""
    until = status.packed_before
    return [(s, e) for tier, s, e in parts if tier.packed is not None and s < until]


@lru_cache(maxsize=8)
def _packed_statement(one: bool, hosted: bool) -> Prepared:
    """The packed buckets starting in ``[start, end)`` of every client, or of the one called
    ``name`` (a range of the (client_id, bucket) index per row of it in ``clients``); on
    ``host_id`` if ``hosted``: (common name, host id, bucket, packed samples)."""
    where = [p.c.bucket >= bindparam("start"), p.c.bucket < bindparam("end")]
    if one:
        where.append(c.c.common_name == bindparam("name"))
    if hosted:
        where.append(c.c.host_id == bindparam("host_id"))
    return Prepared(
        select(c.c.common_name, c.c.host_id, p.c.bucket, p.c.data)
        .join(p, p.c.client_id == c.c.id)
        .where(*where)
    )


def _packed_rows(
    conn: Connection,
    windows: list[tuple[int, int]],
    common_name: str | None,
    host_id: int | None,
) -> Iterator[tuple[int, int, str, int, int, bytes]]:
    """(window start, window end, common name, host id, bucket, packed samples) of the packed
    buckets holding samples of each window (of every client or the one called
    ``common_name``; on ``host_id``, if given)."""
    statement = _packed_statement(common_name is not None, host_id is not None)
    for start, end in windows:
        first = align(start, packed.WIDTH)
        rows = statement(conn, name=common_name, host_id=host_id, start=first, end=end)
        for name, host, bucket, data in rows:
            yield start, end, name, host, bucket, data


def _named_packed(
    conn: Connection,
    status: CollectorStatus,
    common_name: str,
    host_id: int | None,
    parts: list[tuple[Tier, int, int]],
) -> Iterator[tuple[int, int, int, int]]:
    """(host id, ts, rx, tx) of the packed samples of the client called ``common_name`` (on
    ``host_id``, if given) in the raw pieces of ``parts``. No statement when no raw piece
    starts before a packed bucket's end."""
    windows = _packed_windows(status, parts)
    for start, end, _, host, bucket, data in _packed_rows(conn, windows, common_name, host_id):
        for ts, rx, tx in zip(*packed.window(bucket, data, start, end), strict=True):
            yield host, ts, rx, tx


@lru_cache(maxsize=128)
def _client_series_statement(tiers: tuple[str, ...], hosted: bool) -> Prepared:
    """One client's bytes (by ``name``; on ``host_id`` if ``hosted``) per ``step`` bucket in
    each piece (``start_i``/``end_i`` of tier i), UNION ALL."""
    parts = []
    for i, name in enumerate(tiers):
        tier = _SUMMED[name]
        table = tier.table
        key = sql_align(tier.time, bindparam("step")).label("key")
        parts.append(
            select(key, total(table.c.bytes_received), total(table.c.bytes_sent))
            .where(*_named_client_piece(tier, i, hosted))
            .group_by(key)
        )
    return Prepared(union_all(*parts) if len(parts) > 1 else parts[0])


def _named_client_piece(tier: Tier, i: int, hosted: bool) -> list[Any]:
    """Piece ``i``'s rows of the client called ``name`` (its rows of ``clients``: one per host,
    or ``host_id``'s): raw samples by key seeks at the poll times (see ``_poll_times``), a tier
    by its (client_id, bucket) key."""
    ids = select(c.c.id).where(c.c.common_name == bindparam("name"))
    if hosted:
        ids = ids.where(c.c.host_id == bindparam("host_id"))
    if not tier.raw:
        return [tier.table.c.client_id.in_(ids), *_piece_window(tier, i)]
    return [u.c.client_id.in_(ids), u.c.ts.in_(_poll_times(f"start_{i}", f"end_{i}", hosted))]


def _poll_times(start: str, end: str, hosted: bool) -> Any:
    """The poll times between the binds ``start`` and ``end`` (of ``host_id`` if ``hosted``).

    Raw samples are keyed (ts, client_id), and every poll writes a global_history row beside
    its samples: ``ts IN (poll times)`` with the client's ids makes the database seek each
    (ts, client_id) key instead of reading every client's samples."""
    times = select(g.c.ts).where(g.c.ts >= bindparam(start), g.c.ts < bindparam(end))
    if hosted:
        times = times.where(g.c.host_id == bindparam("host_id"))
    return times


def server_series(
    conn: Connection, status: CollectorStatus, series: Series, host_id: int | None = None
) -> Sums:
    """Per bucket: [bytes received, bytes sent, peak concurrent CNs] for the whole fleet (or
    host ``host_id``). A fleet's peak is the sum of each host's peak in the bucket: an upper
    bound (a client on two hosts at once counts twice; two hosts' peaks need not coincide)."""
    assert series.step is not None
    out: Sums = defaultdict(lambda: [0, 0, 0])
    peaks: dict[int, dict[int, int]] = defaultdict(dict)  # bucket -> host -> its peak
    for tier, first, last in _pieces(status, series.tier, series.start, series.end):
        statement = SERVER_SUMS[(tier.name, host_id is not None)]
        rows = statement(conn, step=series.step, start=first, end=last, host_id=host_id)
        for key, host, rx, tx, peak in rows:
            entry = out[key]
            entry[0] += rx
            entry[1] += tx
            peaks[key][host] = max(peaks[key].get(host, 0), peak or 0)
    for key, by_host in peaks.items():
        out[key][2] = sum(by_host.values())
    return out


def client_history(
    conn: Connection,
    status: CollectorStatus,
    common_name: str,
    host_id: int | None,
    series: Series,
) -> tuple[Sums, list[tuple[int, int, int, float]]]:
    """The history of the client called ``common_name`` (on ``host_id``, if given) for
    ``series``: (bucket sums, no samples), or for raw samples as stored (no sums, the
    samples)."""
    if series.step is None:
        return {}, client_samples(conn, status, common_name, host_id, series.start, series.end)
    return client_series(conn, status, common_name, host_id, series), []


def _client_samples(hosted: bool) -> Prepared:
    """One client's raw samples (by ``name``; on ``host_id`` if ``hosted``) with the interval
    of the poll each came from (its host's), oldest first: a (ts, client_id) key seek per poll
    time and row of the client (``_named_client_piece``'s shape)."""
    ids = select(c.c.id).where(c.c.common_name == bindparam("name"))
    if hosted:
        ids = ids.where(c.c.host_id == bindparam("host_id"))
    host = select(c.c.host_id).where(c.c.id == u.c.client_id).correlate(u).scalar_subquery()
    interval = select(g.c.interval).where(g.c.ts == u.c.ts, g.c.host_id == host).correlate(u)
    return Prepared(
        select(u.c.ts, u.c.bytes_received, u.c.bytes_sent, interval.scalar_subquery())
        .where(u.c.client_id.in_(ids), u.c.ts.in_(_poll_times("start", "end", hosted)))
        .order_by(u.c.ts)
    )


CLIENT_SAMPLES = {hosted: _client_samples(hosted) for hosted in (False, True)}


POLL_INTERVALS = {
    hosted: Prepared(
        select(g.c.ts, g.c.host_id, g.c.interval).where(
            g.c.ts >= bindparam("start"),
            g.c.ts < bindparam("end"),
            *([g.c.host_id == bindparam("host_id")] if hosted else []),
        )
    )
    for hosted in (False, True)
}


def client_samples(
    conn: Connection,
    status: CollectorStatus,
    common_name: str,
    host_id: int | None,
    start: int,
    end: int,
) -> list[tuple[int, int, int, float]]:
    """Raw samples (ts, rx, tx, poll interval) in ``[start, end)``, oldest first, as rows or
    packed. Samples of two hosts at the same second are one (bytes summed, the longer
    interval)."""
    found: list[tuple[int, int, int, float]] = []
    raw = [(BY_NAME["raw"], start, end)]
    unpacked = list(_named_packed(conn, status, common_name, host_id, raw))
    if unpacked:
        intervals = {
            (ts, host): interval
            for ts, host, interval in POLL_INTERVALS[host_id is not None](
                conn, start=start, end=end, host_id=host_id
            )
        }
        # as for rows: a sample counts where its poll's whole-server row is held
        found = [
            (ts, rx, tx, intervals[(ts, host)])
            for host, ts, rx, tx in unpacked
            if (ts, host) in intervals
        ]
    statement = CLIENT_SAMPLES[host_id is not None]
    rows = statement(conn, name=common_name, host_id=host_id, start=start, end=end)
    merged: dict[int, list[Any]] = {}
    for ts, rx, tx, interval in sorted([*found, *(tuple(row) for row in rows)]):
        entry = merged.get(ts)
        if entry is None:
            merged[ts] = [rx, tx, float(interval)]
        else:
            entry[0] += rx
            entry[1] += tx
            entry[2] = max(entry[2], float(interval))
    return [(ts, rx, tx, interval) for ts, (rx, tx, interval) in merged.items()]


def pieces(
    status: CollectorStatus, start: int, end: int, tier: Tier = BY_NAME["daily"]
) -> list[tuple[Tier, int, int]]:
    """``[start, end)`` as (tier, start, end) pieces, whole ``tier`` buckets (by default days)
    in the middle and the edges from finer tiers, down to raw samples."""
    return list(_pieces(status, tier, start, end))


def top_clients(
    conn: Connection,
    status: CollectorStatus,
    start: int,
    end: int,
    limit: int = 10,
    host_id: int | None = None,
) -> list[tuple[str, int, int]]:
    """The ``limit`` CNs with most bytes (both directions) in ``[start, end)`` (on every host,
    or on ``host_id``), most first (ties by the oldest client id): every client's sums over the
    range's pieces (whole days from stats_daily, the edges from finer tiers) merged and ranked
    by the database in one statement, so only ``limit`` rows come back. Clients without a byte
    in the range are left out."""
    return client_sums(conn, status, pieces(status, start, end), limit=limit, host_id=host_id)


def client_sums(
    conn: Connection,
    status: CollectorStatus,
    parts: list[tuple[Tier, int, int]],
    *,
    limit: int | None = None,
    common_name: str | None = None,
    host_id: int | None = None,
) -> list[tuple[str, int, int]]:
    """(common name, bytes received, bytes sent) of every client with a byte in ``parts``
    (pieces as ``pieces`` cuts them), summed over its hosts (or on ``host_id`` only): with
    ``limit`` the ``limit`` with most bytes, most first; else all by common name; with
    ``common_name`` that client's only."""
    if not parts:
        return []
    parts = list(_with_months(status, _fewer_rows(status, parts)))
    names = tuple(tier.name for tier, _, _ in parts)
    drives = tuple(_by_client(tier, first, last) for tier, first, last in parts)
    one, hosted = common_name is not None, host_id is not None
    params = {"limit": limit, "name": common_name, "host_id": host_id, **_piece_params(parts)}
    windows = _packed_windows(status, parts)
    if not windows:  # the database sums, ranks and limits
        # every name is one client (one host's, or one host in all): sum clients, then name
        by_id = not one and (hosted or _one_host(conn))
        statement = _sums_statement(names, drives, limit is not None, one, hosted, by_id)
        return [(name, int(rx), int(tx)) for name, rx, tx in plain_rows(statement(conn, **params))]
    # A raw piece inside a packed bucket (an edge that is not a bucket's: /usage to the second):
    # the rows' sums from the database, the packed samples' added here, then ranked here.
    sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for name, rx, tx in _sums_statement(names, drives, False, one, hosted)(conn, **params):
        sums[name][0] += int(rx)
        sums[name][1] += int(tx)
    for start, end, name, _, bucket, data in _packed_rows(conn, windows, common_name, host_id):
        rx, tx = packed.window_sums(bucket, data, start, end)
        entry = sums[name]
        entry[0] += rx
        entry[1] += tx
    # the database's order of names (its collation), and each name's oldest client id
    order = CLIENT_NAMES[hosted](conn, host_id=host_id).all()
    found = [(name, *sums[name], oldest) for name, oldest in order if sum(sums.get(name, ()))]
    if limit is not None:
        found.sort(key=lambda f: (-(f[1] + f[2]), f[3]))
        found = found[:limit]
    return [(name, rx, tx) for name, rx, tx, _ in found]


# The lowest and highest host of any client: two ends of the (host_id) index.
_HOST_SPAN = Prepared(select(func.min(c.c.host_id), func.max(c.c.host_id)))


def _one_host(conn: Connection) -> bool:
    """Whether every client is on one host, so that each common name is one client."""
    low, high = _HOST_SPAN(conn).one()
    return bool(low == high)


CLIENT_NAMES = {
    hosted: Prepared(
        select(c.c.common_name, func.min(c.c.id))
        .where(*([c.c.host_id == bindparam("host_id")] if hosted else []))
        .group_by(c.c.common_name)
        .order_by(c.c.common_name)
    )
    for hosted in (False, True)
}


def _by_client(tier: Tier, start: int, end: int) -> bool:
    """Whether every client's sums over the piece ``[start, end)`` of ``tier`` are best read
    client by client, from the ``(client_id, bucket)`` key (one seek per client, then that
    client's buckets in a row), rather than from the ``(bucket, client_id, bytes...)`` index
    (every client's rows of each bucket, in time order, grouped after). A few buckets read
    from the index: the top ten's pieces at 10,000 clients took 58 ms instead of 152."""
    return not tier.raw and tier.width is not None and end - start > BY_BUCKET_UP_TO * tier.width


# Pieces of up to this many buckets are read from the (bucket, ...) index. Measured at 10,000
# clients: 2 buckets 13-27 ms against 39-60 by client, 8 about even, 16 or more by client
# faster (61-100 ms against 60-118).
BY_BUCKET_UP_TO = 8


@lru_cache(maxsize=128)
def _sums_statement(
    tiers: tuple[str, ...],
    by_client: tuple[bool, ...],
    ranked: bool,
    one: bool,
    hosted: bool,
    by_id: bool = False,
) -> Prepared:
    """Per client sums of every piece (UNION ALL), summed again by common name; ranked and
    limited, or by name; of every client or of the one called ``name``; on every host or on
    ``host_id``. ``by_client``: per piece, whether to read it client by client (``_by_client``).
    ``by_id`` (when each common name is one client): summed by client id, then named (ranked:
    ranked and limited first, so only the ``limit`` clients are named). Grouping every
    client's rows by its name sorts them all by name: at 10,000 clients a top ten took a
    quarter less time by id, and ``/usage``'s month in progress 83 ms instead of 113."""
    parts = []
    for i, name in enumerate(tiers):
        tier = _SUMMED[name]
        table = tier.table
        where = _piece_window(tier, i)
        if one:
            where = _named_client_piece(tier, i, hosted)
        elif by_client[i]:
            # Drive from the clients into each tier's (client_id, bucket) key: one short range
            # per client, read in key order.
            ids = select(c.c.id)
            if hosted:
                ids = ids.where(c.c.host_id == bindparam("host_id"))
            where.append(table.c.client_id.in_(ids))
        negated = name in _NEGATED
        if by_id and not by_client[i]:
            # rows in time order, summed once for every piece below: a per-piece sum would
            # sort them by client first (10,000 clients, 24 h: 48-56 ms against 65-68)
            parts.append(
                select(
                    table.c.client_id.label("client_id"),
                    _signed(table.c.bytes_received, negated).label("rx"),
                    _signed(table.c.bytes_sent, negated).label("tx"),
                ).where(*where)
            )
            continue
        parts.append(
            select(
                table.c.client_id.label("client_id"),
                _signed(total(table.c.bytes_received), negated).label("rx"),
                _signed(total(table.c.bytes_sent), negated).label("tx"),
            )
            .where(*where)
            .group_by(table.c.client_id)
        )
    merged = union_all(*parts).subquery("pieces")
    rx, tx = total(merged.c.rx), total(merged.c.tx)
    if by_id:
        sums = (
            select(merged.c.client_id, rx.label("rx"), tx.label("tx"))
            .group_by(merged.c.client_id)
            .having(rx + tx > 0)
        )
        if hosted:
            sums = sums.where(
                merged.c.client_id.in_(select(c.c.id).where(c.c.host_id == bindparam("host_id")))
            )
        if ranked:
            sums = sums.order_by((rx + tx).desc(), merged.c.client_id).limit(bindparam("limit"))
        summed = sums.subquery("summed")
        order = (
            ((summed.c.rx + summed.c.tx).desc(), summed.c.client_id)
            if ranked
            else (c.c.common_name,)
        )
        return Prepared(
            select(c.c.common_name, summed.c.rx, summed.c.tx)
            .join(c, c.c.id == summed.c.client_id)
            .order_by(*order)
        )
    query = (
        select(c.c.common_name, rx, tx)
        .join(c, c.c.id == merged.c.client_id)
        .group_by(c.c.common_name)
        .having(rx + tx > 0)
    )
    if hosted:
        query = query.where(c.c.host_id == bindparam("host_id"))
    if ranked:
        oldest = func.min(merged.c.client_id)
        query = query.order_by((rx + tx).desc(), oldest).limit(bindparam("limit"))
    else:
        query = query.order_by(c.c.common_name)
    return Prepared(query)


def _piece_params(parts: list[tuple[Tier, int, int]]) -> dict[str, int]:
    """``start_i``/``end_i`` of each piece, as the statements of several pieces take them."""
    params = {}
    for i, (_, first, last) in enumerate(parts):
        params[f"start_{i}"], params[f"end_{i}"] = first, last
    return params


def _piece_window(tier: Tier, i: int) -> list[Any]:
    if tier.name in _OPENED:
        # one bucket (its start), keyed (bucket, client_id): an equality, so that one client's
        # row is a key seek, not a look at every client's
        return [tier.time == bindparam(f"start_{i}")]
    return [tier.time >= bindparam(f"start_{i}"), tier.time < bindparam(f"end_{i}")]
