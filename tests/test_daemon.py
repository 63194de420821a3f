"""The daemon's schedule and its work between polls (fake clock, real database)."""

import datetime as dt
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import FakeClock, TickingClock
from ovpn_harness import Pki
from sqlalchemy import func, select

from ovpnmon_collector import daemon
from ovpnmon_collector.collector import PollSummary
from ovpnmon_common import meta, schema
from ovpnmon_common.buckets import align
from ovpnmon_common.config import RetentionConfig
from ovpnmon_common.meta import watermark_key
from ovpnmon_common.storage import engines, migrations
from ovpnmon_demo.simulator import Simulation, populate

NOW = 1_795_651_200 + 3 * 3600 + 17


def test_next_deadline_is_drift_free_and_skips_missed_slots():
    assert daemon.next_deadline(100.0, 10.0, 103.0) == 110.0  # a 3 s poll does not shift the grid
    assert daemon.next_deadline(100.0, 10.0, 110.0) == 120.0
    assert daemon.next_deadline(100.0, 10.0, 135.5) == 140.0  # an overrun skips, never bursts


def test_run_polls_until_stopped():
    stop = threading.Event()
    polls = []

    class Poller:
        def poll(self):
            polls.append(1)
            if len(polls) == 3:
                stop.set()
            return PollSummary(ts=0, stored=True)

    daemon.run(Poller(), 0.01, stop)  # the system clock
    assert len(polls) == 3


def six_days(tmp_path, every: int):
    """A database with six days polled every ``every`` seconds, and a certificate to scan:
    (engine, the certificate's path)."""
    engine = engines.writer_engine(str(tmp_path / "x.db"))
    migrations.init_db(engine)
    populate(engine, str(tmp_path / "s.log"), NOW - 6 * 86400, NOW, every, Simulation(clients=4))
    crt, _ = Pki.create(tmp_path / "pki").issue("alice")
    return engine, str(crt)


def test_maintenance_rolls_up_packs_prunes_and_scans(tmp_path):
    engine, crt = six_days(tmp_path, 3600)
    clock = FakeClock(NOW, 0.0)
    work = daemon.Maintenance(engine, clock, 10, RetentionConfig(raw_days=2), (crt,), None)
    work.run()  # rollup and the certificate scan are due at once; retention five minutes later
    with engine.connect() as conn:
        assert int(meta.get(conn, watermark_key("hourly"))) == align(NOW, 3600)
        # the packing job packs the raw samples of every bucket the rollups made final
        # (but the last poll's samples: the current rate)
        final = int(meta.get(conn, watermark_key("quarter_hour")))
        u = schema.usage_history
        left = conn.execute(select(u.c.ts).where(u.c.ts < final).distinct()).scalars().all()
        heartbeat = conn.execute(select(schema.hosts.c.heartbeat)).scalar()
        assert left == [heartbeat]
        assert conn.execute(select(func.count()).select_from(schema.usage_packed)).scalar() > 0
        assert conn.execute(select(func.count()).select_from(schema.certificates)).scalar() == 1
        assert (
            conn.execute(select(func.min(schema.global_history.c.ts))).scalar() == NOW - 6 * 86400
        )
    clock.advance(301)
    work.run()
    with engine.connect() as conn:
        oldest = conn.execute(select(func.min(schema.global_history.c.ts))).scalar()
    assert oldest >= align(NOW - 2 * 86400, 86400)


def test_a_long_packing_backlog_leaves_the_certificate_scan_its_turn(tmp_path):
    # an upgraded database: days of raw samples to pack; the slice runs out while packing
    engine, crt = six_days(tmp_path, 600)
    clock = TickingClock(NOW, 0.0)
    work = daemon.Maintenance(engine, clock, 60, RetentionConfig(), (crt,), None)
    work.run()
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(schema.certificates)).scalar() == 1
        cursor = meta.get(conn, meta.PACKED)
        assert cursor is not None  # packing began, and stopped at the slice's end
        assert int(cursor.split()[0]) < int(meta.get(conn, watermark_key("quarter_hour")))
    assert work.due["pack"] <= clock.monotonic()  # what is left goes on at the next chance


def test_a_certificate_issued_or_revoked_after_start_is_recorded_within_a_minute(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization

    engine = engines.writer_engine(str(tmp_path / "x.db"))
    migrations.init_db(engine)
    pki = Pki.create(tmp_path / "pki")
    issued = tmp_path / "issued"
    issued.mkdir()
    crt, _ = pki.issue("alice")
    crt.rename(issued / "alice.crt")
    crl_path = tmp_path / "crl.pem"

    def write_crl(*revoked: Path) -> None:
        now = dt.datetime.now(dt.timezone.utc)
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(pki.ca_cert.subject)
            .last_update(now)
            .next_update(now + dt.timedelta(days=1))
        )
        for path in revoked:
            serial = x509.load_pem_x509_certificate(path.read_bytes()).serial_number
            entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(now)
            builder = builder.add_revoked_certificate(entry.build())
        crl = builder.sign(pki.ca_key, hashes.SHA256())
        fresh = tmp_path / "crl.new"
        fresh.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
        fresh.rename(crl_path)  # a new file, as easyrsa gen-crl makes

    write_crl()
    clock = FakeClock(NOW, 0.0)
    work = daemon.Maintenance(engine, clock, 10, None, (str(issued),), str(crl_path))

    def recorded() -> dict[str, bool]:
        with engine.connect() as conn:
            rows = conn.execute(select(schema.certificates.c.file, schema.certificates.c.revoked))
            return {file: bool(revoked) for file, revoked in rows}

    work.run()
    assert recorded() == {"alice.crt": False}
    scanned = work._certificates_scanned
    clock.advance(60)
    work.run()  # nothing changed: no scan
    assert work._certificates_scanned == scanned
    crt, _ = pki.issue("carol")  # issued after start
    crt.rename(issued / "carol.crt")
    write_crl(issued / "alice.crt")  # and alice revoked
    clock.advance(60)
    work.run()
    assert recorded() == {"alice.crt": True, "carol.crt": False}


# --- memory a poll frees is kept for the next one ----------------------------------------------

_POLLS_IN_A_CHILD = """
import resource, sys, tempfile
from ovpnmon_collector.collector import Collector
from ovpnmon_collector.store import Store
from ovpnmon_collector.daemon import keep_freed_memory
from ovpnmon_collector.snapshot import SessionRow
from ovpnmon_demo.clock import ManualClock
from ovpnmon_demo.simulator import render_status, write_in_place
from ovpnmon_collector.sources import StatusFileSource
from ovpnmon_common.storage.migrations import init_db
from ovpnmon_common.storage.engines import writer_engine


keep = sys.argv[1] == "keep"
kept = keep_freed_memory() if keep else False
directory = tempfile.mkdtemp()
engine = writer_engine(directory + "/ovpnmon.db")
init_db(engine)
clock = ManualClock(1_795_717_500.0, 1_795_717_500.0)
collector = Collector(Store(engine), [StatusFileSource("s", directory + "/status", settle=0)], clock=clock)
faults = []
for poll in range(8):
    rows = [
        SessionRow(f"cn-{i}", f"127.0.0.1:{1000 + i}", "10.8.0.2", "", 10 * poll * i, 5 * poll,
                   int(clock.wall) - 60, i)
        for i in range(6000)
    ]
    write_in_place(directory + "/status", render_status(rows, int(clock.wall)))
    clock.advance(10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    assert collector.poll().stored
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(kept, sum(faults[4:]))
"""


@pytest.mark.slow
def test_keep_freed_memory_spares_steady_polls_their_page_faults():
    """Real polls of 6,000 sessions in child processes (the setting is process-wide): with the
    daemon's setting the steady polls page-fault far less than with glibc's defaults."""

    def steady_faults(mode: str) -> tuple[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", _POLLS_IN_A_CHILD, mode],
            cwd=Path(__file__).resolve().parents[1],  # where ovpnmon_demo is
            capture_output=True,
            text=True,
            check=True,
            timeout=120,
        ).stdout.split()
        return out[0], int(out[1])

    kept, with_setting = steady_faults("keep")
    given_back, default = steady_faults("default")
    assert (kept, given_back) == ("True", "False")
    assert default > 400, "the workload no longer exercises the allocator; make it larger"
    assert with_setting < default / 4, (with_setting, default)
