"""Files ovpnmon does not own are read with bounds: a FIFO, a device or a huge file named as a status
file, a certificate, a CRL, a password or a config file is a clear error, never a hang or a
``MemoryError`` (issue 12, item 9). Through the real commands, in a child process held to 1 GiB of
address space and a deadline, so that a hang or an unbounded read fails the test instead of the
machine."""

from __future__ import annotations

import os
import resource
import subprocess
from pathlib import Path

import pytest
from conftest import run_collector

from ovpnmon_common import meta
from ovpnmon_common.files import BadFile, describe_size, read_regular_file
from ovpnmon_common.storage import engines

ADDRESS_SPACE = 1 << 30


def limited() -> None:  # runs in the child before exec
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def collector(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return run_collector(*args, timeout=timeout, preexec_fn=limited)


@pytest.fixture
def fifo(tmp_path: Path) -> str:
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return str(path)


@pytest.fixture
def huge(tmp_path: Path) -> str:
    """A sparse 1.5 GiB file: no disk used, but reading it all needs 1.5 GiB of memory."""
    path = tmp_path / "huge.log"
    with open(path, "wb") as handle:
        handle.truncate(3 << 29)
    return str(path)


def config_with(tmp_path: Path, status_file: str, extra: str = "") -> str:
    path = tmp_path / "c.conf"
    path.write_text(
        f"[database]\npath = {tmp_path / 'x.db'}\n[source:udp]\nstatus_file = {status_file}\n{extra}"
    )
    return str(path)


@pytest.mark.parametrize(
    ("which", "said"),
    [
        ("fifo", "is a FIFO (named pipe), not a regular file"),
        ("/dev/zero", "is a character device, not a regular file"),
        ("huge", "is 1.5 GiB, larger than the 32.0 MiB ovpnmon reads of such a file"),
        ("dir", "is a directory, not a regular file"),
    ],
)
def test_a_status_file_that_is_no_status_file_is_a_source_error(tmp_path, fifo, huge, which, said):
    target = {"fifo": fifo, "huge": huge, "dir": str(tmp_path)}.get(which, which)
    result = collector("poll-once", "--config", config_with(tmp_path, target))
    assert result.returncode != 0
    assert f"source udp: status file {target} {said}" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and "MemoryError" not in result.stderr
    # the poll itself was stored (the source's health says why it failed): nothing else lost
    engine = engines.reader_engine(str(tmp_path / "x.db"))
    with engine.connect() as conn:
        health = meta.read_status(conn).sources.get("udp")
    engine.dispose()
    assert health is not None and said in health["message"]


def test_a_management_password_file_that_is_a_fifo_is_a_source_error(tmp_path, fifo):
    config = tmp_path / "c.conf"
    config.write_text(
        f"[database]\npath = {tmp_path / 'x.db'}\n[source:tcp]\nmanagement = 127.0.0.1:9\n"
        f"management_password_file = {fifo}\n"
    )
    result = collector("poll-once", "--config", str(config))
    assert result.returncode != 0
    assert (
        f"cannot read password file {fifo}: is a FIFO (named pipe), not a regular file"
        in result.stderr
    ), result.stderr


def test_certificate_paths_and_crl_that_are_no_files_are_skipped_with_a_reason(
    tmp_path, fifo, huge
):
    config = tmp_path / "c.conf"
    config.write_text(
        f"[database]\npath = {tmp_path / 'x.db'}\n"
        f"[certificates]\npaths = {fifo}, /dev/zero, {huge}\ncrl = {fifo}\n"
    )
    result = collector("scan-certs", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"skipped {fifo}: is a FIFO (named pipe), not a regular file" in result.stderr
    assert "skipped /dev/zero: is a character device, not a regular file" in result.stderr
    assert f"skipped {huge}: is 1.5 GiB, larger than the 1.0 MiB" in result.stderr
    assert f"cannot read CRL {fifo}: is a FIFO (named pipe), not a regular file" in result.stderr
    assert "recorded 0 certificates (0 revoked), skipped 3 files" in result.stdout


def test_a_huge_crl_is_refused(tmp_path, huge):
    config = tmp_path / "c.conf"
    config.write_text(
        f"[database]\npath = {tmp_path / 'x.db'}\n[certificates]\npaths = {tmp_path}\n"
        f"crl = {huge}\n"
    )
    result = collector("scan-certs", "--config", str(config))
    assert f"cannot read CRL {huge}: is 1.5 GiB, larger than the 64.0 MiB" in result.stderr


def test_a_config_file_that_is_a_fifo_is_a_config_error(fifo):
    result = collector("info", "--config", fifo)
    assert result.returncode != 0
    assert result.stderr == (
        f"Error: {fifo}: cannot read config file: it is a FIFO (named pipe), not a regular file\n"
    )


def test_read_regular_file_reads_exactly_and_refuses_growth(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 3000)
    assert read_regular_file(str(path), 3000) == b"x" * 3000
    with pytest.raises(BadFile, match=r"is 2\.9 KiB, larger than the 2\.0 KiB"):
        read_regular_file(str(path), 2048)
    assert describe_size(512) == "512 bytes" and describe_size(5 << 20) == "5.0 MiB"
