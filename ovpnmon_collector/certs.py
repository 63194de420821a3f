"""Certificate expiry tracking: scan files and directories, record each certificate, mark revoked.

Reads PEM and DER, easy-rsa ``issued/`` files that start with a text dump of the certificate, and
bundles of several certificates. Anything else is logged with its file name and skipped. The scan
replaces the table: a file that is gone disappears from it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from sqlalchemy import Engine, delete, select

from ovpnmon_common import meta, schema
from ovpnmon_common.files import MIB, read_regular_file

log = logging.getLogger("ovpnmon.certs")

PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"
MAX_FILE_BYTES = 1 * MIB  # a bundle of hundreds of certificates is a few hundred KiB
# A CRL lists 30-40 bytes per revoked certificate: this is well over a million revocations.
MAX_CRL_BYTES = 64 * MIB
SUFFIXES = (".crt", ".pem", ".cer", ".der")


@dataclass(frozen=True)
class CertInfo:
    """What the scan records of one certificate."""

    path: str
    file: str
    common_name: str | None
    serial: str
    not_before: int
    not_after: int
    issuer: str
    revoked: bool = False


@dataclass
class ScanReport:
    """What one scan found: the certificates, the files it skipped and why, and the CRL."""

    certificates: list[CertInfo]
    skipped: dict[str, str]  # path -> why
    crl_error: str | None = None
    revoked: set[str] | None = None  # the CRL's serials, when one was read


def _x509():
    try:
        from cryptography import x509
    except ImportError:  # pragma: no cover - installed with ovpnmon[collector]
        raise RuntimeError(
            "scanning certificates needs cryptography: pip install 'ovpnmon[collector]'"
        ) from None
    return x509


def candidate_files(paths: Iterable[str]) -> Iterator[str]:
    """Each configured file, and the certificate-looking files directly in each directory."""
    for path in paths:
        if os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                full = os.path.join(path, name)
                if os.path.isfile(full) and name.lower().endswith(SUFFIXES):
                    yield full
        else:
            yield path


def fingerprint(paths: Iterable[str], crl: str | None) -> tuple[object, ...]:
    """What changes when a certificate is issued, renewed or revoked: the times and sizes of
    the configured directories, their candidate files and the CRL (a few stats; no reading)."""
    seen: list[object] = []
    for path in (*paths, *((crl,) if crl else ())):
        seen.append((path, _times(path)))
        if os.path.isdir(path):
            seen.extend((name, _times(name)) for name in candidate_files([path]))
    return tuple(seen)


def _times(path: str) -> tuple[int, int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_ctime_ns, info.st_size


def read_certificates(path: str) -> list[CertInfo]:
    """Every certificate in one file (PEM, DER, easy-rsa text dump + PEM, or a PEM bundle)."""
    x509 = _x509()
    data = read_regular_file(path, MAX_FILE_BYTES)
    if PEM_BEGIN in data:
        certs = x509.load_pem_x509_certificates(data[data.index(PEM_BEGIN) :])
    else:
        certs = [x509.load_der_x509_certificate(data)]
    return [_info(path, cert) for cert in certs]


def _info(path: str, cert) -> CertInfo:
    x509 = _x509()
    names = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
    common_name = names[0].value if names else None
    return CertInfo(
        path=path,
        file=os.path.basename(path),
        common_name=str(common_name) if common_name is not None else None,
        serial=format(cert.serial_number, "X"),
        not_before=int(cert.not_valid_before_utc.timestamp()),
        not_after=int(cert.not_valid_after_utc.timestamp()),
        issuer=cert.issuer.rfc4514_string(),
    )


def revoked_serials(crl_path: str) -> set[str]:
    """The serials a CRL file (PEM or DER) revokes, in upper-case hexadecimal."""
    x509 = _x509()
    data = read_regular_file(crl_path, MAX_CRL_BYTES)
    crl = (
        x509.load_pem_x509_crl(data)
        if b"-----BEGIN X509 CRL-----" in data
        else x509.load_der_x509_crl(data)
    )
    return {format(entry.serial_number, "X") for entry in crl}


def scan(paths: Iterable[str], crl: str | None = None) -> ScanReport:
    """Read every candidate file; never raises for a bad file, only reports it."""
    found: list[CertInfo] = []
    skipped: dict[str, str] = {}
    for path in candidate_files(paths):
        try:
            found.extend(read_certificates(path))
        except (OSError, ValueError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            skipped[path] = reason.splitlines()[0] if reason else type(exc).__name__
            log.warning("certificates: skipped %s: %s", path, skipped[path])
    report = ScanReport(found, skipped)
    if crl:
        try:
            revoked = revoked_serials(crl)
        except (OSError, ValueError) as exc:  # BadFile is a ValueError
            report.crl_error = (
                f"cannot read CRL {crl}: {exc.strerror if isinstance(exc, OSError) else exc}"
            )
            log.warning("certificates: %s", report.crl_error)
        else:
            report.revoked = revoked
            report.certificates = [
                CertInfo(**{**c.__dict__, "revoked": c.serial in revoked}) for c in found
            ]
    return report


def store(engine: Engine, report: ScanReport, now: int, host: str) -> None:
    """Replace the certificates of ``host`` with this scan's result, in one transaction.

    A certificate recorded before that the scan no longer finds, but whose serial the CRL lists,
    stays, marked revoked: ``easyrsa revoke`` moves the certificate's file out of
    ``pki/issued/`` (to ``pki/revoked/``, which the collector need not be able to read), and a
    revoked certificate is what an administrator most wants to see listed."""
    rows = [
        {
            "host_id": 0,  # set below
            "path": c.path,
            "serial": c.serial,
            "file": c.file,
            "common_name": c.common_name,
            "not_before": c.not_before,
            "not_after": c.not_after,
            "issuer": c.issuer,
            "revoked": c.revoked,
            "scanned_at": now,
        }
        for c in report.certificates
    ]
    unique = list({(r["path"], r["serial"]): r for r in rows}.values())
    t = schema.certificates
    with engine.begin() as conn:
        host_id = meta.register_host(conn, host, now)
        for row in unique:
            row["host_id"] = host_id
        if report.revoked:
            scanned = {r["serial"] for r in unique}
            unique += [
                {**row, "revoked": True}
                for row in conn.execute(select(t).where(t.c.host_id == host_id)).mappings()
                if row["serial"] in report.revoked and row["serial"] not in scanned
            ]
        conn.execute(delete(t).where(t.c.host_id == host_id))
        if unique:
            conn.execute(t.insert(), unique)
        meta.put_host(conn, host_id, certificates_scanned_at=now)
