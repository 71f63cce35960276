"""The event loop of the pure-Python engine: the twin of csrc/loop.c.

I/O watchers over ``selectors`` (the one pyecho/_pycompat.py picks),
one-shot timers in a binary heap, a thread-safe wake-up and ``now`` in
monotonic milliseconds, updated once per turn. One turn (``run_once``)
waits for I/O or the next timer, dispatches every ready watcher, then runs
every timer that is due.

Safety rule: any callback may stop any watcher or timer, its own or
another's, at any time. A stopped watcher's events still in the batch being
dispatched are dropped, so no event reaches a connection that was closed.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import socket
import time
from collections.abc import Callable
from typing import Any

from ._pycompat import make_selector, select_limit_error

READ, WRITE = 1, 2  # the C core's EV_READ, EV_WRITE (and selectors' values)


def now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


class Timer:
    """A one-shot timer: ``fn()`` runs in the first turn whose ``now`` is at
    least the time it was started for, never earlier."""

    __slots__ = ("fn", "_entry")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self._entry: list[Any] | None = None  # [when, seq, self] while pending

    @property
    def pending(self) -> bool:
        return self._entry is not None

    @property
    def when(self) -> int | None:
        """The time (ms) it fires at, None if not pending."""
        return None if self._entry is None else self._entry[0]


class _Io:
    """A watcher: what is watched on one socket and whom to tell."""

    __slots__ = ("sock", "mask", "fn", "active")

    def __init__(self, sock: Any, mask: int, fn: Callable[[int], Any]) -> None:
        self.sock = sock
        self.mask = mask
        self.fn = fn
        self.active = True


class Loop:
    """One thread's event loop. Only ``wake()`` may be called from another
    thread (or a signal handler)."""

    def __init__(self) -> None:
        self.now = now_ms()
        self._sel = make_selector()
        self._io: dict[int, _Io] = {}  # by file descriptor
        # Timers: a heap of [when, seq, timer] entries. A stopped or re-armed
        # timer leaves its old entry behind with the timer cleared (lazy
        # deletion); they are dropped as they surface or when they are many.
        self._heap: list[list[Any]] = []
        self._dead = 0
        self._seq = itertools.count()
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._wake_r.setblocking(False)
            self._wake_w.setblocking(False)
            self.io_start(self._wake_r, READ, self._drain_wake)
        except BaseException:
            self.close()
            raise

    # ---- I/O watchers ----

    def io_start(self, sock: Any, mask: int, fn: Callable[[int], Any]) -> None:
        """Call ``fn(ready)`` when sock is ready for what ``mask`` (READ,
        WRITE) asks; errors and hang-ups count as ready for both."""
        fd = sock.fileno()
        if fd in self._io:
            raise ValueError(f"descriptor {fd} is watched already")
        w = _Io(sock, mask, fn)
        if mask:
            self._sel.register(sock, mask, w)
        self._io[fd] = w

    def io_set(self, sock: Any, mask: int) -> None:
        """Watch for something else (0: nothing, for now)."""
        w = self._io[sock.fileno()]
        if mask == w.mask:
            return
        if not mask:
            self._sel.unregister(sock)
        elif not w.mask:
            self._sel.register(sock, mask, w)
        else:
            self._sel.modify(sock, mask, w)
        w.mask = mask

    def io_stop(self, sock: Any) -> None:
        """Stop watching sock (before closing it); events of it not yet
        dispatched are dropped."""
        w = self._io.pop(sock.fileno(), None)
        if w is None:
            return
        w.active = False
        if w.mask:
            self._sel.unregister(sock)

    # ---- timers ----

    def timer_start(self, timer: Timer, when_ms: int) -> None:
        """Run the timer at when_ms (loop time); re-arms it if pending."""
        old = timer._entry
        if old is not None:
            if old[0] == when_ms:
                return
            old[2] = None
            self._dead += 1
        entry = [when_ms, next(self._seq), timer]
        timer._entry = entry
        heapq.heappush(self._heap, entry)
        if self._dead > 64 and self._dead > len(self._heap) // 2:
            self._compact()

    def timer_stop(self, timer: Timer) -> None:
        entry = timer._entry
        if entry is not None:
            entry[2] = None
            timer._entry = None
            self._dead += 1

    def _compact(self) -> None:
        self._heap = [e for e in self._heap if e[2] is not None]
        heapq.heapify(self._heap)
        self._dead = 0

    def _next_timer(self) -> int | None:
        """When the first pending timer fires, None if none is."""
        heap = self._heap
        while heap and heap[0][2] is None:
            heapq.heappop(heap)
            self._dead -= 1
        return heap[0][0] if heap else None

    def _run_timers(self) -> None:
        """Run the due timers, earliest first. Those started by these very
        callbacks wait for a later turn, even if due; a timer whose entry
        is popped is no longer pending, so a callback that raises (a signal)
        leaves every other timer in the heap, consistent."""
        heap, now = self._heap, self.now
        turn = next(self._seq)  # entries started from here on are newer
        later = []
        try:
            while heap and heap[0][0] <= now:
                entry = heapq.heappop(heap)
                timer = entry[2]
                if timer is None:
                    self._dead -= 1
                elif entry[1] > turn:
                    later.append(entry)
                else:
                    entry[2] = None
                    timer._entry = None
                    timer.fn()
        finally:
            for entry in later:
                heapq.heappush(heap, entry)

    # ---- wake-up ----

    def wake(self) -> None:
        """Make the current or next run_once() return soon. Thread-safe."""
        try:
            self._wake_w.send(b"\0")
        except BlockingIOError:
            pass  # full: the loop is woken already

    def _drain_wake(self, _ready: int) -> None:
        # Whenever it is readable: a wake-up that lands after the turn it was
        # meant for must not leave the socket readable for every turn after.
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    # ---- turns ----

    def update_now(self) -> int:
        self.now = now_ms()
        return self.now

    def run_once(self, timeout_ms: int = -1) -> int:
        """Wait for I/O or the next timer (at most timeout_ms; -1: no
        limit), dispatch every ready watcher, then run every due timer.
        Returns how many watchers were ready."""
        wait = timeout_ms
        first = self._next_timer()
        if first is not None:
            until = max(0, first - self.now)
            if wait < 0 or until < wait:
                wait = until
        try:
            ready = self._sel.select(None if wait < 0 else wait / 1000)
        except ValueError as e:  # past the select() selector's limit
            if not isinstance(self._sel, selectors.SelectSelector):
                raise
            raise select_limit_error(self._sel, e) from None
        self.now = now_ms()
        for key, mask in ready:
            w = key.data
            if w.active:  # not stopped by an earlier callback of this batch
                mask &= w.mask
                if mask:
                    w.fn(mask)
        if self._heap and self._heap[0][0] <= self.now:
            self._run_timers()
        return len(ready)

    def close(self) -> None:
        """Release the loop's own descriptors (not the watched sockets)."""
        self._io.clear()
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
