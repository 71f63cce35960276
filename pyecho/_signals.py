"""Signals while a server's loop runs: their Python handlers wait for it to
return, for both engines.

Python runs a signal's handler on the main thread at the next Python code it
executes. Inside a serving loop that is an event callback (the C loop's,
through cffi) or any step of the Python loop, and the KeyboardInterrupt
raised there cuts that step short: an event neither printed nor counted, a
timer's work half done. So while a loop runs, SIGINT's and SIGTERM's Python
handlers only take note (and may wake the loop), and run once it returned.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

DEFERRED = (signal.SIGINT, signal.SIGTERM)


class SignalsDeferred:
    """``with SignalsDeferred(wake):`` around a run of a loop: on the main
    thread, a SIGINT or SIGTERM with a Python handler calls ``wake()`` (if
    given; from the signal's handler, so it must be brief) and its handler
    runs at the end of the block, in order. A handler that raises (Ctrl+C's
    KeyboardInterrupt) ends the block with its exception; signals noted
    after it are left to their next delivery. Elsewhere it does nothing:
    only the main thread runs Python signal handlers."""

    def __init__(self, wake: Callable[[], None] | None = None) -> None:
        self._wake = wake
        self._saved: dict[int, Any] = {}
        self._caught: list[tuple[int, FrameType | None]] = []
        self._note = self._take_note  # one bound method, to recognise it

    def _take_note(self, signum: int, frame: FrameType | None) -> None:
        self._caught.append((signum, frame))
        if self._wake is not None:
            self._wake()

    @property
    def caught(self) -> bool:
        """A signal came in the block: the loop should return soon."""
        return bool(self._caught)

    def __enter__(self) -> SignalsDeferred:
        if threading.current_thread() is threading.main_thread():
            for sig in DEFERRED:
                handler = signal.getsignal(sig)
                if callable(handler):
                    self._saved[sig] = handler
                    signal.signal(sig, self._note)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for sig, handler in self._saved.items():
            if signal.getsignal(sig) == self._note:  # not changed meanwhile
                signal.signal(sig, handler)
        while self._caught:
            sig, frame = self._caught.pop(0)
            self._saved[sig](sig, frame)
