"""Reading files ovpnmon does not own — status files, certificates, CRLs, password and config
files — with bounds: only regular files, never more than a stated size, never blocking.

A path an administrator types can name a FIFO (an ``open()`` that waits forever for a writer), a
device such as ``/dev/zero`` (a read that never ends) or a file of gigabytes (a ``read()`` that
ends in ``MemoryError``). Every such file is refused here with a message that says what it is,
before a byte of it is read.
"""

from __future__ import annotations

import os
import stat

KIB = 1024
MIB = 1024 * KIB


class BadFile(ValueError):
    """A file ovpnmon will not read: not a regular file, or larger than its limit."""


def describe_size(size: int) -> str:
    """A byte count as a person reads it: ``512 bytes``, ``3.2 MiB``, ``1.5 GiB``."""
    if size < KIB:
        return f"{size} bytes"
    for unit, scale in (("GiB", 1024 * MIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    raise AssertionError("unreachable")


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode):
        return "a character device"
    if stat.S_ISBLK(mode):
        return "a block device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def open_regular(path: str, limit: int) -> tuple[int, os.stat_result]:
    """Open ``path`` for reading without blocking and check it: a regular file of at most
    ``limit`` bytes. Returns the descriptor (the caller closes it) and its ``fstat``.

    ``O_NONBLOCK`` makes opening a FIFO return at once instead of waiting for a writer; on a
    regular file it changes nothing. Raises ``BadFile``, or ``OSError`` when it cannot be opened.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    fd = os.open(path, flags)
    try:
        info = os.fstat(fd)
        check_regular(info, limit)
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def check_regular(info: os.stat_result, limit: int) -> None:
    """Raise ``BadFile`` unless ``info`` is a regular file of at most ``limit`` bytes."""
    if not stat.S_ISREG(info.st_mode):
        raise BadFile(f"is {_kind(info.st_mode)}, not a regular file")
    if info.st_size > limit:
        raise BadFile(
            f"is {describe_size(info.st_size)}, larger than the {describe_size(limit)} "
            "ovpnmon reads of such a file"
        )


def read_fd(fd: int, limit: int) -> bytes:
    """Everything from offset 0 to the end, refusing more than ``limit`` bytes (a file may grow
    between ``fstat`` and the read)."""
    chunks: list[bytes] = []
    offset = 0
    while True:
        chunk = os.pread(fd, min(limit + 1 - offset, 1 * MIB), offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)
        if offset > limit:
            raise BadFile(f"grew beyond the {describe_size(limit)} ovpnmon reads of such a file")


def read_regular_file(path: str, limit: int) -> bytes:
    """The whole of a regular file of at most ``limit`` bytes (``BadFile`` or ``OSError``)."""
    fd, _ = open_regular(path, limit)
    try:
        return read_fd(fd, limit)
    finally:
        os.close(fd)
