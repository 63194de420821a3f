"""systemd's notify protocol (READY=1, WATCHDOG=1, STOPPING=1): silent when not under systemd."""

from __future__ import annotations

import os
import socket


class Notifier:
    """Sends state lines to ``$NOTIFY_SOCKET``; every method is a no-op when it is unset.

    ``watchdog_every`` is how often systemd wants ``WATCHDOG=1``: half of ``$WATCHDOG_USEC``
    (the unit's ``WatchdogSec``) when it is set for this process, else None.
    """

    def __init__(self, address: str | None = None, watchdog_usec: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        if address and address.startswith("@"):
            address = "\0" + address[1:]  # abstract namespace socket
        self.address = address or None
        self.watchdog_every = _watchdog_every(watchdog_usec)

    def send(self, state: str) -> bool:
        """Send one ``sd_notify`` message; False (and nothing sent) without ``NOTIFY_SOCKET`` or
        when the socket cannot be reached."""
        if not self.address:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.connect(self.address)
                sock.sendall(state.encode())
        except OSError:
            return False  # systemd gone or socket unreachable: monitoring must not stop for it
        return True

    def ready(self) -> bool:
        """Tell systemd the collector is up (``Type=notify``)."""
        return self.send("READY=1")

    def watchdog(self) -> bool:
        """Feed the systemd watchdog."""
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        """Tell systemd the collector is stopping."""
        return self.send("STOPPING=1")

    def status(self, text: str) -> bool:
        """The one-line status ``systemctl status`` shows."""
        return self.send(f"STATUS={text}")


def _watchdog_every(usec: str | None) -> float | None:
    if usec is None:
        if os.environ.get("WATCHDOG_PID", str(os.getpid())) != str(os.getpid()):
            return None  # meant for another process (systemd sets it for the main one)
        usec = os.environ.get("WATCHDOG_USEC")
    try:
        value = int(usec) if usec else 0
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
