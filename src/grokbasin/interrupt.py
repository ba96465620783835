"""Ctrl-C and SIGTERM: stop within a sampler step, keep what finished, exit 130 (143 for TERM).

SIGINT raises KeyboardInterrupt in the main thread (Python's default); :func:`handling` makes
SIGTERM do the same, so both unwind through the same ``finally`` blocks and atomic writes. Sampler
shards in other threads cannot receive signals: they poll a :class:`threading.Event` the main
thread sets when it is interrupted (``llc.shards.map_ranges``) and raise :class:`Interrupted`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LAST: list[int] = []  # the signal that interrupted this process, if any


class Interrupted(KeyboardInterrupt):
    """Raised in a sampler thread after the main thread was interrupted."""


def _raise(signum: int, frame: object) -> None:
    _LAST.append(signum)
    raise KeyboardInterrupt


@contextmanager
def handling() -> Iterator[None]:
    """SIGINT and SIGTERM raise KeyboardInterrupt in the main thread (handlers restored after)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _LAST.clear()
    for s in before:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, h in before.items():
            signal.signal(s, h)


def signalled() -> bool:
    """Whether SIGINT or SIGTERM arrived while :func:`handling` was active."""
    return bool(_LAST)


def exit_code() -> int:
    """The shell's code for the signal that stopped us: 130 for SIGINT, 143 for SIGTERM."""
    return 128 + (_LAST[-1] if _LAST else signal.SIGINT)


def checker(cancel: threading.Event) -> None:
    """Raise :class:`Interrupted` once ``cancel`` is set (polled between sampler steps)."""
    if cancel.is_set():
        raise Interrupted
