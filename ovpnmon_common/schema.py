"""Every table the collector writes and the API reads (SQLAlchemy Core, portable SQL only).

Time is integer UTC epoch seconds everywhere. Byte counters are 64-bit. Keys and indexes follow
the queries that use them; see docs/schema.md for the why of each.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    event,
    text,
)

SCHEMA_VERSION = 10

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# Schema version, rollup watermarks and how far prune deleted: what every writer shares. What one
# collector says of itself is in ``hosts`` and ``sources``.
meta = Table(
    "meta",
    metadata,
    Column("key", Text, primary_key=True),
    Column("value", Text, nullable=False),
)

# One row per collector (a VPN host, ``[collector] host``), written by that collector only: its
# heartbeat (the epoch second of its last stored poll), configured interval, how long its last
# stored poll took, and when it last scanned certificates. Never deleted. Added in schema 4.
hosts = Table(
    "hosts",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("name", Text, nullable=False, unique=True),
    Column("first_seen", BigInteger, nullable=False),
    Column("heartbeat", BigInteger, nullable=True),
    Column("interval", Integer, nullable=True),
    Column("poll_seconds", Float, nullable=True),
    Column("certificates_scanned_at", BigInteger, nullable=True),
)

# One row per source of a host: when it was first watched (counters older than that are never
# counted), its health record (JSON: state, message, since, last_ok) and the latest Connected
# Since among its closed sessions (a session looking new but connected before it may be one
# that came back). Added in schema 4 (these were ``meta`` keys).
sources = Table(
    "sources",
    metadata,
    Column("host_id", Integer, primary_key=True),
    Column("name", Text, primary_key=True),
    Column("first_watched", BigInteger, nullable=True),
    Column("health", Text, nullable=True),
    Column("closed_since", BigInteger, nullable=True),
)

# One row per common name per host (``host_id``: the collector that saw it): a common name seen on
# two hosts is one client with two rows, and everything keyed by ``client_id`` (sessions, raw
# samples, tiers) is that host's part of it; readers sum a common name's rows. Written only by
# its host's collector, and only when something changes for the client there (it appears,
# becomes active or inactive, a session closes), never on every poll: a lifetime total is
# closed_* plus its open sessions' (bytes - baseline); while active, last_seen is its host's
# heartbeat. ``host_id`` added in schema 4 (the key was the common name alone).
clients = Table(
    "clients",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("common_name", Text, nullable=False),
    Column("host_id", Integer, nullable=False),
    Column("first_seen", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
    Column("active", Boolean, nullable=False),
    # counted bytes of the client's closed sessions
    Column("closed_received", BigInteger, nullable=False),
    Column("closed_sent", BigInteger, nullable=False),
    # common name first: a client's rows on every host are one short range of this key
    UniqueConstraint("common_name", "host_id"),
    Index(None, "host_id"),
)

# the columns of an open session that ``ix_sessions_open`` holds beyond its key (schema 9)
OPEN_COVERED = (
    "host_id",
    "source",
    "bytes_received",
    "bytes_sent",
    "baseline_received",
    "baseline_sent",
)

# One row per OpenVPN connection: the accounting state and the connection history at once.
# Identity is (host_id, source, session_key, connected_since) where session_key is
# "id:<Client ID>" (v2/v3, management) or "addr:<Real Address>" (v1), never the common name alone.
sessions = Table(
    "sessions",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("host_id", Integer, nullable=False),
    Column("source", Text, nullable=False),
    Column("session_key", Text, nullable=False),
    Column("connected_since", BigInteger, nullable=False),
    Column("client_id", Integer, ForeignKey("clients.id"), nullable=False),
    Column("real_address", Text, nullable=False, default=""),
    Column("virtual_address", Text, nullable=False, default=""),
    Column("virtual_ipv6", Text, nullable=False, default=""),
    Column("first_seen", BigInteger, nullable=False),
    Column("last_seen", BigInteger, nullable=False),
    Column("disconnected_at", BigInteger, nullable=True),
    # OpenVPN's own counters when the session opened and when it closed; while it is open, its
    # source's session_counters row holds the counters of the last poll (if it has an entry)
    Column("bytes_received", BigInteger, nullable=False, default=0),
    Column("bytes_sent", BigInteger, nullable=False, default=0),
    # counters already there when the source was first watched: never counted
    Column("baseline_received", BigInteger, nullable=False, default=0),
    Column("baseline_sent", BigInteger, nullable=False, default=0),
    UniqueConstraint("host_id", "source", "session_key", "connected_since"),
    Index(None, "client_id", "connected_since"),
    # the connection log, newest first (GET /sessions): a page is a short backward index walk.
    # Added in schema version 3.
    Index(None, "connected_since"),
    # open sessions only: every poll's and request's question, a few rows among millions.
    # disconnected_at (NULL in every entry) makes "client_id = ? AND disconnected_at IS NULL"
    # two constraints on it, so that SQLite's planner takes it over the index of every session
    # above, which it otherwise may (schema 7). The columns after connected_since are what
    # lifetime totals read of every open session (``totals.COUNTED``), so /stats,
    # /stats/system and /metrics read them from the index alone, not from rows scattered over
    # the table (schema 9). An entry changes only when its session opens or closes.
    Index(
        "ix_sessions_open",
        "client_id",
        "disconnected_at",
        "connected_since",
        *OPEN_COVERED,
        sqlite_where=text("disconnected_at IS NULL"),
        postgresql_where=text("disconnected_at IS NULL"),
    ),
)

# The counters of every open session of one source at the last poll that read it, packed by
# ovpnmon_common.counters: one row rewritten per source per poll instead of one UPDATE per session.
# ``ts`` is that poll's time (the open sessions' last seen). Added in schema version 2.
session_counters = Table(
    "session_counters",
    metadata,
    Column("host_id", Integer, primary_key=True),
    Column("source", Text, primary_key=True),
    Column("ts", BigInteger, nullable=False),
    Column("counters", LargeBinary, nullable=False),
)

# Raw per-client samples: one row per active CN per poll (zero deltas included: presence).
# Keyed by (ts, client_id), time first: a poll's rows are appended at the end of the tree (a few
# dozen pages for 9,000 clients), where a (client_id, ts) key put each client's new row on a page
# of its own: 9,000 pages, 37 MB of WAL and ~160 ms per poll with an hour of history (bench:
# docs/schema.md). One client's samples are read by seeking (ts, client_id) for each poll's ts in
# global_history; rollups and pruning read time ranges, which this key serves directly.
# client_id declares no FOREIGN KEY: checking one is an eighth of the cost of a poll's inserts,
# and the one writer takes every id from clients in the same transaction.
usage_history = Table(
    "usage_history",
    metadata,
    Column("client_id", Integer, nullable=False),
    Column("ts", BigInteger, nullable=False),
    Column("bytes_received", BigInteger, nullable=False),
    Column("bytes_sent", BigInteger, nullable=False),
    PrimaryKeyConstraint("ts", "client_id"),
    sqlite_with_rowid=False,
)

# Raw per-client samples of closed buckets, packed (``ovpnmon_common.packed``): one row per
# client per 15-minute bucket instead of one per poll, with the bucket's sums beside the packed
# samples, so whole-bucket sums stay plain SQL. The collector moves ``usage_history`` rows here
# once their bucket is final in the 15-minute tier (``ovpnmon_collector.pack``); readers take
# raw samples from both tables. Time first, like ``usage_history``: each pass appends. Added in
# schema version 5.
usage_packed = Table(
    "usage_packed",
    metadata,
    Column("bucket", BigInteger, nullable=False),
    Column("client_id", Integer, nullable=False),
    Column("bytes_received", BigInteger, nullable=False),
    Column("bytes_sent", BigInteger, nullable=False),
    Column("samples", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    PrimaryKeyConstraint("bucket", "client_id"),
    Index(None, "client_id", "bucket"),  # one client's buckets: a key range, not every client's
    sqlite_with_rowid=False,
)

# Raw whole-server samples: one row per host per poll; ``interval`` is the monotonic poll
# interval (s). ``host_id`` added in schema 4.
global_history = Table(
    "global_history",
    metadata,
    Column("ts", BigInteger, primary_key=True),
    Column("host_id", Integer, primary_key=True),
    Column("bytes_received", BigInteger, nullable=False),
    Column("bytes_sent", BigInteger, nullable=False),
    Column("active_count", Integer, nullable=False),
    Column("interval", Float, nullable=False),
)

# Whole-server 15-minute tier behind /analytics (105 and 450 minutes are whole multiples), per
# host. ``host_id`` added in schema 4.
global_15min = Table(
    "global_15min",
    metadata,
    Column("bucket", BigInteger, primary_key=True),
    Column("host_id", Integer, primary_key=True),
    Column("bytes_received", BigInteger, nullable=False),
    Column("bytes_sent", BigInteger, nullable=False),
    Column("max_active", Integer, nullable=False),
    Column("samples", Integer, nullable=False),
)


def _client_tier(name: str) -> Table:
    return Table(
        name,
        metadata,
        Column("client_id", Integer, ForeignKey("clients.id"), primary_key=True),
        Column("bucket", BigInteger, primary_key=True),
        Column("bytes_received", BigInteger, nullable=False),
        Column("bytes_sent", BigInteger, nullable=False),
        Column("samples", Integer, nullable=False),
        # every client's sums over a few buckets (a top ten's pieces, a rollup's source, retention)
        # read from the index alone, in time order (schema 6; was ``(bucket)``)
        Index(None, "bucket", "client_id", "bytes_received", "bytes_sent"),
        sqlite_with_rowid=False,
    )


# 15-minute per-client buckets: the finest tier, kept as long as raw samples. Top-N questions and
# the bucket in progress of every coarser tier read it instead of scanning raw samples.
stats_15min = _client_tier("stats_15min")

# The 15-minute tier's bucket in progress, summed up to its open mark after every poll
# (``ovpnmon_collector.rollup.sum_open``); its rows move into ``stats_15min`` when the bucket
# closes. A table of its own, bucket first, so that adding a poll rewrites a few pages (210 kB
# of WAL for 8,300 clients) rather than one page per client among stats_15min's (5.8 MB), and
# readers of a range that ends now read no raw samples (schema 10). No foreign key, as for raw
# samples: the one writer takes the ids it writes from ``clients``.
stats_15min_open = Table(
    "stats_15min_open",
    metadata,
    Column("client_id", Integer, nullable=False),  # the tiers' column order, keyed bucket first
    Column("bucket", BigInteger, nullable=False),
    Column("bytes_received", BigInteger, nullable=False),
    Column("bytes_sent", BigInteger, nullable=False),
    Column("samples", Integer, nullable=False),
    PrimaryKeyConstraint("bucket", "client_id"),
    sqlite_with_rowid=False,
)

stats_hourly = _client_tier("stats_hourly")
stats_6h = _client_tier("stats_6h")
stats_daily = _client_tier("stats_daily")

# Each client's calendar months (UTC; ``bucket`` is the month's start, ``buckets.month_start``):
# the sums of its ``stats_daily`` rows, kept equal to them by the database itself (triggers:
# ``monthly_triggers``) whatever writes or deletes a day (rollup, a late poll, backfill, prune,
# copy). ``/usage`` of a month reads one row per client here instead of thirty (schema 8).
stats_monthly = _client_tier("stats_monthly")

# The month of a ``stats_daily`` row's bucket, per dialect.
_MONTH_OF = {
    "sqlite": "CAST(strftime('%s', {0}.bucket, 'unixepoch', 'start of month') AS INTEGER)",
    "postgresql": (
        "CAST(extract(epoch FROM date_trunc('month', to_timestamp({0}.bucket) AT TIME ZONE 'UTC'))"
        " AS BIGINT)"
    ),
}
_ADD = """INSERT INTO stats_monthly (client_id, bucket, bytes_received, bytes_sent, samples)
    VALUES (NEW.client_id, {month}, NEW.bytes_received, NEW.bytes_sent, NEW.samples)
    ON CONFLICT (client_id, bucket) DO UPDATE SET
      bytes_received = stats_monthly.bytes_received + excluded.bytes_received,
      bytes_sent = stats_monthly.bytes_sent + excluded.bytes_sent,
      samples = stats_monthly.samples + excluded.samples"""
_TAKE = """UPDATE stats_monthly SET
      bytes_received = bytes_received - OLD.bytes_received,
      bytes_sent = bytes_sent - OLD.bytes_sent,
      samples = samples - OLD.samples
    WHERE client_id = OLD.client_id AND bucket = {month};
    DELETE FROM stats_monthly WHERE client_id = OLD.client_id AND bucket = {month}
      AND samples = 0 AND bytes_received = 0 AND bytes_sent = 0"""


def month_of(dialect: str, table: str) -> str:
    """SQL for the month (its start, ``buckets.month_start``) of ``table``'s row's bucket."""
    return _MONTH_OF[dialect].format(table)


def monthly_triggers(dialect: str) -> list[str]:
    """The statements that create (or replace) the triggers keeping ``stats_monthly`` the sums
    of ``stats_daily``: a day added, changed or deleted is added to or taken from its month
    (a month without days left is deleted)."""
    new, old = month_of(dialect, "NEW"), month_of(dialect, "OLD")
    add, take = _ADD.format(month=new), _TAKE.format(month=old)
    if dialect == "sqlite":
        return [
            "DROP TRIGGER IF EXISTS stats_monthly_add",
            "DROP TRIGGER IF EXISTS stats_monthly_change",
            "DROP TRIGGER IF EXISTS stats_monthly_take",
            f"CREATE TRIGGER stats_monthly_add AFTER INSERT ON stats_daily BEGIN {add}; END",
            f"CREATE TRIGGER stats_monthly_change AFTER UPDATE ON stats_daily BEGIN {take}; {add};"
            " END",
            f"CREATE TRIGGER stats_monthly_take AFTER DELETE ON stats_daily BEGIN {take}; END",
        ]
    return [
        f"""CREATE OR REPLACE FUNCTION stats_monthly_sums() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    {take};
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    {add};
  END IF;
  RETURN NULL;
END $$""",
        "DROP TRIGGER IF EXISTS stats_monthly_sums ON stats_daily",
        "CREATE TRIGGER stats_monthly_sums AFTER INSERT OR UPDATE OR DELETE ON stats_daily"
        " FOR EACH ROW EXECUTE FUNCTION stats_monthly_sums()",
    ]


@event.listens_for(metadata, "after_create")
def _create_monthly_triggers(target: MetaData, connection: Any, **kw: Any) -> None:
    for statement in monthly_triggers(connection.dialect.name):
        connection.exec_driver_sql(statement)


# One row per certificate found by a host's scan (a bundle file holds several: path + serial).
# ``host_id`` added in schema 4.
certificates = Table(
    "certificates",
    metadata,
    Column("host_id", Integer, primary_key=True),
    Column("path", Text, primary_key=True),
    Column("serial", Text, primary_key=True),  # hexadecimal, as openssl prints it
    Column("file", Text, nullable=False),
    Column("common_name", Text, nullable=True),
    Column("not_before", BigInteger, nullable=False),
    Column("not_after", BigInteger, nullable=False),
    Column("issuer", Text, nullable=False),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("scanned_at", BigInteger, nullable=False),
)
