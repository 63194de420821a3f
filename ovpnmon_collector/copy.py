"""``ovpnmon-collector copy-to URL``: a whole history, exactly, into another database — a
SQLite file into PostgreSQL when a host moves to it, into a fleet's database that other hosts
already write, under a host name (``--host``).

Everything is read from one snapshot of the source (consistent even while a collector writes
it) and written in batches of ``BATCH`` rows, each an upsert in a transaction of its own, so a
copy that stopped half-way is finished by running it again and a copy run twice leaves the same
rows, never two. The source's hosts become hosts of the target by name; its clients and sessions
take the target's ids (the ones they already have there, on a second run; new ones from the
target's sequences otherwise, in the source's order, so a copy into an empty database keeps
every id), and every row that names them (raw samples, tiers, the packed counters of open
sessions) is written with the target's. ``meta`` comes last: each tier's watermark is the
later of the two, the buckets in between built from finer data for the hosts whose buckets
there were not final (the copied hosts', or the target's others'), and how far prune went is
the later of the two. A target whose host of the same name holds a client or a session the
source does not (another history) is refused before anything is written. Afterwards the rows
and byte sums of every table are compared, the copied hosts' part of the target against the
source.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, Table, func, select

from ovpnmon_collector import rollup
from ovpnmon_common import counters, meta, schema
from ovpnmon_common.storage import engines, postgres, statements
from ovpnmon_common.tiers import ROLLUPS

BATCH = 10_000


class CopyError(Exception):
    """The target cannot take this history; the message says why."""


@dataclass
class TableCopy:
    """What one table holds in the source and, after the copy, in the target."""

    name: str
    rows: int = 0
    target_rows: int = 0
    sums: tuple[int, ...] = ()
    target_sums: tuple[int, ...] = ()

    @property
    def equal(self) -> bool:
        return self.rows == self.target_rows and self.sums == self.target_sums


@dataclass
class CopyReport:
    tables: list[TableCopy] = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return all(t.equal for t in self.tables)


# the tables copied row for row with ids mapped, in this order (hosts, sessions' packed counters
# and meta have their own steps)
_PLAIN = (
    schema.sources,
    schema.clients,
    schema.sessions,
    schema.usage_history,
    schema.usage_packed,
    schema.global_history,
    schema.stats_15min,
    schema.stats_15min_open,
    schema.stats_hourly,
    schema.stats_6h,
    schema.stats_daily,
    schema.global_15min,
    schema.certificates,
)


def _byte_columns(table: Table) -> list[str]:
    return [
        c.name
        for c in table.columns
        if c.name.startswith("bytes_") or c.name in ("closed_received", "closed_sent")
    ]


def _facts(
    conn: Connection, table: Table, hosts: list[int] | None, before: int | None = None
) -> tuple[int, tuple[int, ...]]:
    """Rows and byte sums of ``table`` (of ``hosts`` only, if given; of the buckets before
    ``before`` only, if given)."""
    columns = _byte_columns(table)
    query = select(func.count(), *(statements.total(table.c[c]) for c in columns))
    query = query.select_from(table)
    if before is not None:
        query = query.where(table.c.bucket < before)
    if hosts is not None:
        if "host_id" in table.c:
            query = query.where(table.c.host_id.in_(hosts))
        elif "client_id" in table.c:
            c = schema.clients
            query = query.where(table.c.client_id.in_(select(c.c.id).where(c.c.host_id.in_(hosts))))
        elif table is schema.hosts:
            query = query.where(table.c.id.in_(hosts))
    row = conn.execute(query).one()
    return int(row[0]), tuple(int(v or 0) for v in row[1:])


def _batches(conn: Connection, table: Table) -> Iterator[list[tuple[Any, ...]]]:
    keys = list(table.primary_key.columns)
    result = conn.execution_options(yield_per=BATCH).execute(select(table).order_by(*keys))
    for part in result.partitions(BATCH):
        yield [tuple(row) for row in part]


class _Ids:
    """Source ids -> target ids of hosts, clients and sessions."""

    def __init__(self) -> None:
        self.hosts: dict[int, int] = {}
        self.clients: dict[int, int] = {}
        self.sessions: dict[int, int] = {}

    def column(self, name: str) -> Mapping[int, int] | None:
        return {"host_id": self.hosts, "client_id": self.clients}.get(name)


def copy(
    source: Engine,
    target: Engine,
    host: str | None = None,
    progress: Callable[[str, int], None] = lambda t, n: None,
) -> CopyReport:
    """Copy the history in ``source`` into ``target`` (its schema already made, at the same
    version), its hosts under their own names or, with one host, under ``host``;
    ``progress(table, rows so far)`` after each batch. Raises ``CopyError`` for a target whose
    host of that name holds another history."""
    report = CopyReport()
    ids = _Ids()
    with source.connect() as read:  # one snapshot of the source for the whole copy
        with target.connect() as check:
            fresh = check.execute(select(schema.hosts.c.id).limit(1)).first() is None
        _copy_hosts(read, target, host, ids)
        _map_clients(read, target, ids)
        _map_sessions(read, target, ids)
        for table in _PLAIN:
            _copy_table(read, target, table, ids, progress)
        _copy_counters(read, target, ids)
        _merge_meta(read, target, ids, fresh)
        copied = sorted(ids.hosts.values())
        # a tier the copy filled in holds more buckets than the source: compared up to the
        # source's watermark, where the source's were final
        watermarks = meta.watermarks(read)
        marks = {t.table.name: watermarks.get(t.name) for t in ROLLUPS}
        for table in (schema.hosts, *_PLAIN, schema.session_counters):
            entry = TableCopy(table.name)
            before = marks.get(table.name)
            entry.rows, entry.sums = _facts(read, table, None, before)
            with target.connect() as check:
                entry.target_rows, entry.target_sums = _facts(check, table, copied, before)
            report.tables.append(entry)
    if target.dialect.name == "postgresql":
        # the collectors that write there next take their ids from the sequences, which must
        # start after the ones copied
        with target.begin() as write:
            postgres.advance_sequences(write, ("hosts", "clients", "sessions"))
    return report


def _copy_hosts(read: Connection, target: Engine, host: str | None, ids: _Ids) -> None:
    """Each source host as a host of the target (by name), refused if that host holds a
    client or a session the source does not."""
    hosts = read.execute(select(schema.hosts).order_by(schema.hosts.c.id)).mappings().all()
    if host is not None and len(hosts) > 1:
        names = ", ".join(h["name"] for h in hosts)
        raise CopyError(f"the source holds {len(hosts)} hosts ({names}): --host names only one")
    with target.begin() as write:
        for row in hosts:
            name = host or row["name"]
            there = meta.register_host(write, name, row["first_seen"])
            ours = _held(read, row["id"])
            for what, theirs in _held(write, there).items():
                extra = sorted(theirs - ours[what])
                if extra:
                    raise CopyError(
                        f"the target holds another history for host {name!r}: its {what} "
                        f"{extra[0]!r} is not in the source; copy under another --host, or "
                        "into a database without that host"
                    )
            said = ("heartbeat", "interval", "poll_seconds", "certificates_scanned_at")
            meta.put_host(write, there, **{k: row[k] for k in said})
            ids.hosts[row["id"]] = there


def _held(conn: Connection, host_id: int) -> dict[str, set[Any]]:
    """A host's clients (common names) and sessions (their identities)."""
    c, s = schema.clients, schema.sessions
    key = (s.c.source, s.c.session_key, s.c.connected_since)
    return {
        "client": set(
            conn.execute(select(c.c.common_name).where(c.c.host_id == host_id)).scalars()
        ),
        "session": {tuple(r) for r in conn.execute(select(*key).where(s.c.host_id == host_id))},
    }


def _map_clients(read: Connection, target: Engine, ids: _Ids) -> None:
    c = schema.clients
    with target.begin() as write:
        there = {
            (name, host): cid
            for cid, name, host in write.execute(
                select(c.c.id, c.c.common_name, c.c.host_id).where(
                    c.c.host_id.in_(list(ids.hosts.values()))
                )
            )
        }
        rows = read.execute(select(c.c.id, c.c.common_name, c.c.host_id).order_by(c.c.id)).all()
        new = [
            (cid, name, host) for cid, name, host in rows if (name, ids.hosts[host]) not in there
        ]
        fresh = iter(engines.next_ids(write, "clients", len(new)) if new else [])
        for cid, name, host in rows:
            found = there.get((name, ids.hosts[host]))
            ids.clients[cid] = found if found is not None else next(fresh)


def _map_sessions(read: Connection, target: Engine, ids: _Ids) -> None:
    s = schema.sessions
    key = (s.c.host_id, s.c.source, s.c.session_key, s.c.connected_since)
    with target.begin() as write:
        there = {
            tuple(r[1:]): r[0]
            for r in write.execute(
                select(s.c.id, *key).where(s.c.host_id.in_(list(ids.hosts.values())))
            )
        }
        rows = read.execute(select(s.c.id, *key).order_by(s.c.id)).all()
        mapped = [(r[0], (ids.hosts[r[1]], *r[2:])) for r in rows]
        new = sum(1 for _, k in mapped if k not in there)
        fresh = iter(engines.next_ids(write, "sessions", new) if new else [])
        for sid, k in mapped:
            found = there.get(k)
            ids.sessions[sid] = found if found is not None else next(fresh)


def _copy_table(
    read: Connection,
    target: Engine,
    table: Table,
    ids: _Ids,
    progress: Callable[[str, int], None],
) -> None:
    columns = tuple(c.name for c in table.columns)
    keys = [c.name for c in table.primary_key.columns]
    maps: list[tuple[int, Mapping[int, int]]] = [
        (i, found) for i, name in enumerate(columns) if (found := ids.column(name)) is not None
    ]
    if table is schema.clients:
        maps.append((columns.index("id"), ids.clients))
    elif table is schema.sessions:
        maps.append((columns.index("id"), ids.sessions))
    done = 0
    for rows in _batches(read, table):
        out = []
        for row in rows:
            values = list(row)
            for i, mapping in maps:
                values[i] = mapping[values[i]]
            out.append(tuple(values))
        with target.begin() as write:
            engines.hold_tiers(write, shared=True)  # as a poll: never beside a rollup
            statements.upsert_tuples(write, table, columns, out, keys)
        done += len(rows)
        progress(table.name, done)


def _copy_counters(read: Connection, target: Engine, ids: _Ids) -> None:
    """Open sessions' packed counters, their session ids the target's."""
    rows = []
    for host, source, ts, data in read.execute(select(schema.session_counters)):
        entries = list(counters.Counters(data).items())
        packed = counters.pack(
            [ids.sessions[sid] for sid, _ in entries],
            [rx for _, (rx, _) in entries],
            [tx for _, (_, tx) in entries],
        )
        rows.append({"host_id": ids.hosts[host], "source": source, "ts": ts, "counters": packed})
    with target.begin() as write:
        statements.upsert(write, schema.session_counters, rows, ["host_id", "source"])


def _merge_meta(read: Connection, target: Engine, ids: _Ids, fresh: bool) -> None:
    """Watermarks and prune marks: the source's in a target that had no host before; else each
    tier's is the later of the two. A tier the target built further than the source gets the
    copied hosts' buckets in between from their finer data (their rows only: the other hosts'
    are final there already); one the source built further, the target's other hosts' (never
    the copied hosts': the source may have pruned the samples under their final buckets, and
    the target's next rollup would rebuild them from what is left). How far prune went, and
    where packing goes on, is the later of the two. A tier's open mark
    (``rollup.sum_open``) is the source's where the target's rows of the bucket in progress
    are the source's (a fresh target), or sum up to the same mark from the same watermark;
    otherwise the target has none, and its readers take the bucket from raw samples, the
    copied ones included, until its next rollup sums it afresh (a day's rows of it, which its
    month's row would count, go with the mark)."""
    source_status = meta.read_status(read)
    copied = list(ids.hosts.values())
    with target.begin() as write:
        engines.hold_tiers(write, shared=False)
        theirs = meta.read_status(write)
        hosts = schema.hosts.c.id
        others = list(write.execute(select(hosts).where(hosts.not_in(copied))).scalars())
        entries: dict[str, str] = {}
        marks = dict(theirs.watermarks)  # each tier's watermark in the target after the copy
        for tier in ROLLUPS:  # finest first: each is built from the one before, merged already
            mine, there = source_status.watermarks.get(tier.name), theirs.watermarks.get(tier.name)
            if mine is None:
                continue
            if there is None:
                # Only the copy is there: its mark holds. (Other hosts' data and no mark: the
                # next rollup builds the tier from the oldest finer row, the copy's included.)
                if fresh:
                    entries[meta.watermark_key(tier.name)] = str(mine)
                    marks[tier.name] = mine
                continue
            # The later watermark holds, the buckets in between built for the hosts whose are
            # not final yet from their finer data: the copied hosts' where the target went
            # further, the target's others' where the source did. (Not the copied hosts' there:
            # the source may have pruned the raw samples under their final buckets.)
            if mine == there:
                continue
            for host in copied if mine < there else others:
                rollup.rebuild(write, tier, min(mine, there), max(mine, there), host_id=host)
            if mine > there:
                entries[meta.watermark_key(tier.name)] = str(mine)
                marks[tier.name] = mine
        gone = []
        for tier in ROLLUPS:
            mark = source_status.opened.get(tier.name)
            same = (source_status.watermarks.get(tier.name), mark) == (
                theirs.watermarks.get(tier.name),
                theirs.opened.get(tier.name),
            )
            if mark is not None and (fresh or same):
                entries[meta.open_key(tier.name)] = str(mark)
            else:
                gone.append(meta.open_key(tier.name))
                rollup.drop_open(write, tier, marks.get(tier.name))
        for name, before in source_status.pruned.items():
            there = theirs.pruned.get(name)
            entries[meta.pruned_key(name)] = str(max(before, there) if there else before)
        # where packing goes on: the later of the two, so readers look for the packed samples
        # copied (rows of the target before it stay rows)
        cursors = [meta.get(read, meta.PACKED), meta.get(write, meta.PACKED)]
        known = [tuple(map(int, c.split())) for c in cursors if c is not None]
        if known:
            entries[meta.PACKED] = " ".join(map(str, max(known)))
        meta.delete(write, gone)
        if entries:
            meta.put_many(write, entries)
