"""Certificate scanning on files made with cryptography: PEM, DER, easy-rsa, bundles, junk, a CRL."""

import datetime as dt

import falcon.testing
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from ovpn_harness import Pki

from ovpnmon_api.app import create_app
from ovpnmon_collector import certs
from ovpnmon_collector.cli import cli
from ovpnmon_common.config import Config
from ovpnmon_common.storage import engines, migrations


@pytest.fixture
def pki_dir(tmp_path):
    pki = Pki.create(tmp_path / "pki")
    issued = tmp_path / "issued"
    issued.mkdir()
    alice_crt, _ = pki.issue("alice", days=30)
    bob_crt, _ = pki.issue("bob", days=400)
    carol_crt, _ = pki.issue("carol", days=10)
    alice = x509.load_pem_x509_certificate(alice_crt.read_bytes())
    (issued / "alice.crt").write_bytes(alice_crt.read_bytes())
    bob = x509.load_pem_x509_certificate(bob_crt.read_bytes())
    (issued / "bob.der").write_bytes(bob.public_bytes(serialization.Encoding.DER))
    # easy-rsa's issued/ files start with openssl's text dump of the certificate
    (issued / "carol.crt").write_bytes(
        b"Certificate:\n    Data:\n        Version: 3 (0x2)\n        Serial Number: ...\n"
        + carol_crt.read_bytes()
    )
    (issued / "bundle.pem").write_bytes(
        alice_crt.read_bytes() + (tmp_path / "pki" / "ca.crt").read_bytes()
    )
    (issued / "junk.crt").write_bytes(b"this is not a certificate\n")
    (issued / "notes.txt").write_text("ignored: not a certificate file name")
    now = dt.datetime.now(dt.timezone.utc)
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca_cert.subject)
        .last_update(now)
        .next_update(now + dt.timedelta(days=7))
        .add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(bob.serial_number)
            .revocation_date(now)
            .build()
        )
        .sign(pki.ca_key, hashes.SHA256())
    )
    crl_path = tmp_path / "crl.pem"
    crl_path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return issued, crl_path, alice, bob


def test_scan_reads_every_format_and_skips_junk(pki_dir):
    issued, crl, alice, _ = pki_dir
    report = certs.scan([str(issued)], str(crl))
    by_file = {}
    for c in report.certificates:
        by_file.setdefault(c.file, []).append(c)
    assert sorted(by_file) == ["alice.crt", "bob.der", "bundle.pem", "carol.crt"]
    assert [c.common_name for c in by_file["bundle.pem"]] == ["alice", "ovpnmon test CA"]
    (a,) = by_file["alice.crt"]
    assert a.serial == format(alice.serial_number, "X")
    assert a.not_after == int(alice.not_valid_after_utc.timestamp())
    assert a.issuer == "CN=ovpnmon test CA" and not a.revoked
    assert by_file["bob.der"][0].revoked is True
    assert list(report.skipped) == [str(issued / "junk.crt")]
    assert report.crl_error is None


def test_bad_crl_is_reported_not_fatal(pki_dir, tmp_path):
    issued, _, _, _ = pki_dir
    bad = tmp_path / "bad-crl.pem"
    bad.write_text("garbage")
    report = certs.scan([str(issued)], str(bad))
    assert report.crl_error.startswith(f"cannot read CRL {bad}:")
    assert len(report.certificates) == 5


def test_cli_scan_then_api_then_removed_file_disappears(pki_dir, tmp_path):
    issued, crl, _, _ = pki_dir
    path = tmp_path / "x.db"
    config = tmp_path / "c.conf"
    config.write_text(f"[database]\npath = {path}\n[certificates]\npaths = {issued}\ncrl = {crl}\n")
    result = CliRunner().invoke(cli, ["scan-certs", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "recorded 5 certificates (1 revoked), skipped 1 files" in result.stdout
    assert f"skipped {issued / 'junk.crt'}:" in result.stderr
    api = falcon.testing.TestClient(create_app(Config(database=str(path))))
    body = api.simulate_get("/api/v1/certificates").json
    assert body["count"] == 5
    carol = next(c for c in body["data"] if c["file"] == "carol.crt")
    assert carol["days_remaining"] in ("9 days", "10 days") and carol["is_expired"] is False
    assert body["data"][0]["file"] == "carol.crt"  # soonest expiry first
    assert next(c for c in body["data"] if c["file"] == "bob.der")["revoked"] is True
    (issued / "carol.crt").unlink()
    assert CliRunner().invoke(cli, ["scan-certs", "--config", str(config)]).exit_code == 0
    files = [c["file"] for c in api.simulate_get("/api/v1/certificates").json["data"]]
    assert "carol.crt" not in files and len(files) == 4
    # a revoked certificate moved away (as easyrsa revoke does) stays listed, revoked
    (issued / "bob.der").rename(tmp_path / "bob.der")
    assert CliRunner().invoke(cli, ["scan-certs", "--config", str(config)]).exit_code == 0
    data = api.simulate_get("/api/v1/certificates").json["data"]
    assert len(data) == 4  # bundle.pem holds two
    assert next(c for c in data if c["file"] == "bob.der")["revoked"] is True


def test_scan_certs_without_paths_is_an_error(tmp_path):
    result = CliRunner().invoke(cli, ["scan-certs", "--db", str(tmp_path / "x.db")])
    assert result.exit_code == 1
    assert "[certificates] paths is not set: nothing to scan" in result.stderr


def test_expired_certificate(tmp_path):
    pki = Pki.create(tmp_path / "pki")
    crt, _ = pki.issue("old", days=-2)
    engine = engines.writer_engine(str(tmp_path / "x.db"))
    migrations.init_db(engine)
    certs.store(engine, certs.scan([str(crt)]), 0, "vpn1")
    api = falcon.testing.TestClient(create_app(Config(database=str(tmp_path / "x.db"))))
    (row,) = api.simulate_get("/api/v1/certificates").json["data"]
    assert row["is_expired"] is True and row["days_remaining"] in ("-1 days", "-2 days")
