"""The one background loop of the API: a thread that brings something up to the database's
state after each commit (``/metrics``' snapshot, the response warmer) while it is wanted.

The thread holds its owner weakly, so it ends with the application that owns it; it calls the
owner's ``warm_once()`` every ``WATCH_SECONDS`` until that returns False (nobody needs it any
more), and is started again by the owner when it is wanted again.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Protocol


class Warms(Protocol):
    """What the loop needs of its owner."""

    WATCH_SECONDS: float

    def warm_once(self) -> bool: ...


def ensure_running(
    owner: Warms, thread: threading.Thread | None, lock: threading.Lock, name: str
) -> threading.Thread:
    """``thread`` if it is alive, else a new one running the loop for ``owner`` (under
    ``lock``, so two callers start one); the caller keeps what this returns."""
    if thread is not None and thread.is_alive():
        return thread
    with lock:
        if thread is None or not thread.is_alive():
            thread = threading.Thread(target=_loop, args=(weakref.ref(owner),), name=name)
            thread.daemon = True
            thread.start()
        return thread


def _loop(ref: weakref.ref[Warms]) -> None:
    while True:
        owner = ref()
        if owner is None or not owner.warm_once():
            return
        pause = owner.WATCH_SECONDS
        del owner  # held only weakly between steps
        time.sleep(pause)
