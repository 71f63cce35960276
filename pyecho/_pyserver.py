"""The echo server of the pure-Python engine: the twin of csrc/server.c.

It has the structure of the C server function for function, over the same
event loop (pyecho/_pyloop.py, the twin of csrc/loop.c), so either can be
read to understand the other: one thread, per-connection output bounded by
max_pending (backpressure), idle and linger deadlines in lists ordered by
time, each driven by one loop timer at its oldest entry's deadline.
"""

from __future__ import annotations

import errno
import socket
from collections import OrderedDict
from collections.abc import Callable
from functools import partial

from ._config import CLOSE_REASONS, Config, Event, Stats, idle_timeout_ms, numeric_host, sockaddr
from ._framing import scanner
from ._pyloop import READ, WRITE, Loop, Timer

READ_CHUNK = 64 * 1024  # bytes read at once in raw and line mode
ACCEPT_BURST = 64  # connections accepted per readiness event
ACCEPT_PAUSE_MS = 100  # back-off after running out of descriptors
LINGER_MS = 2000  # longest wait for the peer's EOF after quit
MAKE_ROOM_READS = 16  # reads that drain a lingering connection closed early

PEER, QUIT, RESET, SHUTDOWN, IDLE, LIMIT, RESET_AFTER, REFUSED = CLOSE_REASONS

# What the C core treats as "try again later" rather than a failed connection.
_RETRY = (BlockingIOError, InterruptedError)


class _Conn:
    __slots__ = (
        "sock",
        "events",
        "closing",
        "lingering",
        "cont",
        "id",
        "last_active_ms",
        "held",
        "out",
        "peer",
    )

    def __init__(self, sock: socket.socket, conn_id: int, peer: tuple, now: int):
        self.sock = sock
        self.events = READ  # what the loop watches now
        self.closing: str | None = None  # the close reason once the peer is done
        self.lingering = False  # after quit: output sent and shut, input dropped
        self.cont = False  # line mode: inside a line longer than max_line
        self.id = conn_id
        self.last_active_ms = now  # or, lingering, when the lingering began
        self.held = b""  # line mode: a partial line, fewer than max_line bytes
        self.out = bytearray()  # echo the client has not taken yet
        self.peer = (numeric_host(peer), peer[1])


class PyServer:
    """One listening socket and its clients, served by run()."""

    def __init__(
        self,
        cfg: Config,
        family: int,
        host: str,
        port: int,
        on_event: Callable[[Event], None] | None,
    ) -> None:
        self.cfg = cfg
        self._on_event = on_event
        self._idle_ms = idle_timeout_ms(cfg)
        self._scan = scanner(cfg)
        self._want = cfg.bufsize if cfg.mode == "seed" else READ_CHUNK
        self._line = cfg.mode == "line"
        self._next_id = 0
        self._stop = False  # set by stop(), from any thread
        self._accept_paused = False  # out of descriptors: waiting for the accept timer
        self._active: OrderedDict[int, _Conn] = OrderedDict()  # least recently active first
        self._lingering: OrderedDict[int, _Conn] = OrderedDict()  # in the order they began
        self._counts = dict.fromkeys(("accepted", "open", "rejected", "bytes_in", "bytes_out"), 0)
        self._closed = dict.fromkeys(CLOSE_REASONS, 0)
        self._idle_timer = Timer(self._on_idle_timer)
        self._linger_timer = Timer(self._on_linger_timer)
        self._accept_timer = Timer(self._on_accept_resume)
        self._listener: socket.socket | None = None
        self._loop: Loop | None = Loop()
        try:
            self._listener = socket.socket(family, socket.SOCK_STREAM)
            # Restarting right after a stop must not fail on TIME_WAIT sockets.
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(sockaddr(family, host, port))
            self._listener.listen(cfg.backlog)
            self._listener.setblocking(False)
            self._loop.io_start(self._listener, READ, self._on_acceptable)
        except BaseException:
            self.free()
            raise

    # ---- connection lists (oldest first, for timeouts) ----

    def _touch(self, c: _Conn) -> None:
        if self._idle_ms and not c.lingering:
            c.last_active_ms = self._loop.now
            self._active.move_to_end(c.id)

    # ---- events ----

    def _notify(self, c: _Conn, kind: str, reason: str | None) -> None:
        if self._on_event is not None:
            self._on_event(Event(kind, c.id, c.peer, reason))

    def _conn_close(self, c: _Conn, reason: str) -> None:
        self._loop.io_stop(c.sock)  # its events still in this batch are dropped
        c.sock.close()
        del (self._lingering if c.lingering else self._active)[c.id]
        self._counts["open"] -= 1
        self._closed[reason] += 1
        self._notify(c, "close", reason)

    def _update_interest(self, c: _Conn) -> None:
        """Watch for input while the peer may still send and the queue has
        room (or, lingering, for its EOF); for output while anything is queued."""
        want = 0
        if c.lingering or (c.closing is None and len(c.out) < self.cfg.max_pending):
            want |= READ
        if c.out:
            want |= WRITE
        if want != c.events:
            self._loop.io_set(c.sock, want)
            c.events = want

    def _conn_done(self, c: _Conn, reason: str) -> None:
        """All echo is out and the connection ends. After the quit word the
        peer may still be sending, and close() with unread input answers with
        a reset that destroys echo still in flight to it. So linger instead:
        shut our side (the FIN follows the echo), drop what the peer sends,
        and close at its EOF or after LINGER_MS."""
        if reason != QUIT:
            self._conn_close(c, reason)
            return
        try:
            c.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._conn_close(c, reason)
            return
        del self._active[c.id]
        c.lingering = True
        c.last_active_ms = self._loop.now
        self._lingering[c.id] = c
        if not self._linger_timer.pending:
            self._loop.timer_start(self._linger_timer, c.last_active_ms + LINGER_MS)
        self._update_interest(c)

    def _drop_input(self, c: _Conn, reads: int) -> bool:
        """Lingering: read and drop up to ``reads`` chunks; False once the
        peer's EOF (or a failure) ended the connection's input."""
        for _ in range(reads):
            try:
                dropped = c.sock.recv(READ_CHUNK)
            except _RETRY:
                return True
            except OSError:
                return False
            if not dropped:
                return False
            self._counts["bytes_in"] += len(dropped)
        return True

    def _on_lingering_readable(self, c: _Conn) -> None:
        """Lingering: read and drop; the peer's EOF (or failure) ends it."""
        if not self._drop_input(c, 1):
            self._conn_close(c, QUIT)

    def _finish(self, c: _Conn, reason: str) -> None:
        """The peer is done (EOF or quit): end now or once the queue drains."""
        c.closing = reason
        if not c.out:
            self._conn_done(c, reason)
        else:
            self._update_interest(c)

    def _send(self, c: _Conn, data: bytes | bytearray) -> int | None:
        """Bytes sent now (0 if the socket is full), or None if it failed."""
        try:
            n = c.sock.send(data, socket.MSG_NOSIGNAL)
        except _RETRY:
            return 0
        except OSError:
            return None
        self._counts["bytes_out"] += n
        return n

    def _flush_out(self, c: _Conn) -> bool:
        """Write what can go now; False if the connection failed."""
        while c.out:
            n = self._send(c, c.out)
            if n is None:
                return False
            if n == 0:
                return True
            del c.out[:n]
        return True

    def _echo_out(self, c: _Conn, data: bytes) -> bool:
        """Echo data: straight to the socket when nothing is queued before it."""
        if not c.out and data:
            n = self._send(c, data)
            if n is None:
                return False
            if n == len(data):
                return True  # the common case: all sent, nothing to queue
            data = data[n:]
        c.out += data
        return True

    def _on_readable(self, c: _Conn) -> None:
        try:
            chunk = c.sock.recv(self._want)
        except _RETRY:
            return
        except OSError:
            self._conn_close(c, RESET)
            return
        if not chunk:
            # Half-close: a partial line is still echoed, nothing is lost,
            # and it is forgotten.
            held, c.held = c.held, b""
            if not self._echo_out(c, held):
                self._conn_close(c, RESET)
            else:
                self._finish(c, PEER)
            return
        self._counts["bytes_in"] += len(chunk)
        if self._idle_ms:
            self._touch(c)
        buf = c.held + chunk if c.held else chunk
        emit, c.cont, quit_ = self._scan(c.cont, buf)
        if not self._echo_out(c, buf if emit == len(buf) else buf[:emit]):
            self._conn_close(c, RESET)
            return
        if quit_:
            c.held = b""
            self._finish(c, QUIT)
            return
        if self._line:
            c.held = buf[emit:] if emit < len(buf) else b""
        if c.events != READ or c.out:
            self._update_interest(c)

    def _on_writable(self, c: _Conn) -> bool:
        """Returns True if the connection was closed."""
        before = len(c.out)
        if not self._flush_out(c):
            self._conn_close(c, RESET)
            return True
        if len(c.out) < before:
            self._touch(c)
        if c.closing is not None and not c.out:
            self._conn_done(c, c.closing)
            return True
        self._update_interest(c)
        return False

    def _on_conn_io(self, c: _Conn, ready: int) -> None:
        # Errors and hang-ups surface through recv() or send().
        if ready & WRITE and self._on_writable(c):
            return
        if ready & READ and c.events & READ:
            if c.lingering:
                self._on_lingering_readable(c)
            else:
                self._on_readable(c)

    # ---- accepting ----

    def _pause_accepting(self) -> None:
        self._loop.io_set(self._listener, 0)
        self._accept_paused = True
        self._loop.timer_start(self._accept_timer, self._loop.now + ACCEPT_PAUSE_MS)

    def _on_accept_resume(self) -> None:
        self._loop.io_set(self._listener, READ)
        self._accept_paused = False

    def _add_conn(self, sock: socket.socket, peer: tuple) -> None:
        sock.setblocking(False)
        # Echoes go out as they are made: do not hold them back to coalesce.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._next_id += 1
        c = _Conn(sock, self._next_id, peer, self._loop.now)
        self._active[c.id] = c
        self._counts["accepted"] += 1
        self._counts["open"] += 1
        self._loop.io_start(sock, READ, partial(self._on_conn_io, c))
        if self._idle_ms and not self._idle_timer.pending:
            self._loop.timer_start(self._idle_timer, c.last_active_ms + self._idle_ms)
        self._notify(c, "open", None)

    def _make_room(self) -> bool:
        """At max_clients: close the oldest lingering connection (its echo is
        out and its peer asked to quit), input drained first so the close
        does not reset it; False if there is none."""
        if not self._lingering:
            return False
        oldest = next(iter(self._lingering.values()))
        self._drop_input(oldest, MAKE_ROOM_READS)
        self._conn_close(oldest, QUIT)
        return True

    def _on_acceptable(self, _ready: int) -> None:
        max_clients = self.cfg.max_clients
        for _ in range(ACCEPT_BURST):
            try:
                sock, peer = self._listener.accept()
            except BlockingIOError:
                return
            except (InterruptedError, ConnectionAbortedError):
                continue
            except OSError as e:
                if e.errno == errno.EPROTO:
                    continue
                self._pause_accepting()  # EMFILE, ENFILE, ENOBUFS, ENOMEM
                return
            # Lingering connections hold descriptors too: they count.
            if max_clients and self._counts["open"] >= max_clients and not self._make_room():
                sock.close()
                self._counts["rejected"] += 1
                continue
            self._add_conn(sock, peer)

    # ---- deadlines ----

    def _on_idle_timer(self) -> None:
        """Close the connections idle for idle_timeout, then wait for the
        next oldest (touched ones moved to the end: their deadline is later)."""
        now, idle = self._loop.now, self._idle_ms
        while self._active:
            oldest = next(iter(self._active.values()))
            if oldest.last_active_ms + idle > now:
                self._loop.timer_start(self._idle_timer, oldest.last_active_ms + idle)
                return
            self._conn_close(oldest, IDLE)

    def _on_linger_timer(self) -> None:
        now = self._loop.now
        while self._lingering:
            oldest = next(iter(self._lingering.values()))
            if oldest.last_active_ms + LINGER_MS > now:
                self._loop.timer_start(self._linger_timer, oldest.last_active_ms + LINGER_MS)
                return
            self._conn_close(oldest, QUIT)

    def _arm_timers(self) -> None:
        """Arm the idle and linger timers if a list has entries and its timer
        is not pending, and the accept pause's if accepting is paused: a
        signal may have interrupted the callback that would have done it."""
        if self._idle_ms and self._active and not self._idle_timer.pending:
            oldest = next(iter(self._active.values()))
            self._loop.timer_start(self._idle_timer, oldest.last_active_ms + self._idle_ms)
        if self._lingering and not self._linger_timer.pending:
            oldest = next(iter(self._lingering.values()))
            self._loop.timer_start(self._linger_timer, oldest.last_active_ms + LINGER_MS)
        if self._accept_paused and not self._accept_timer.pending:
            self._loop.timer_start(self._accept_timer, self._loop.now)

    def _close_all(self, reason: str) -> None:
        while self._active:
            self._conn_close(next(iter(self._active.values())), reason)
        # Their echo is out and the peer asked to quit: that is how they end.
        while self._lingering:
            self._conn_close(next(iter(self._lingering.values())), QUIT)

    # ---- the loop ----

    def run(self, timeout: float | None) -> int:
        """Serve for at most timeout seconds (None: until stopped): 1 if the
        time ran out while serving, 0 once stop() was called (every client
        connection is then closed)."""
        loop = self._loop
        loop.update_now()
        self._arm_timers()
        deadline = None if timeout is None else loop.now + round(timeout * 1000)
        while True:
            # Once per turn; the wake-up that came with it is drained by the
            # loop whenever it is readable, even after this session ended.
            if self._stop:
                self._close_all(SHUTDOWN)
                # Only now: a stop asked for by a close event belongs to this stop.
                self._stop = False
                return 0
            loop.run_once(-1 if deadline is None else max(0, deadline - loop.now))
            if deadline is not None and loop.now >= deadline:
                return 1

    # ---- life cycle ----

    def address(self) -> tuple[str, int]:
        addr = self._listener.getsockname()
        return numeric_host(addr), addr[1]

    def stop(self) -> None:
        self._stop = True
        self._loop.wake()

    def stats(self) -> Stats:
        return Stats(closed=dict(self._closed), **self._counts)

    def free(self) -> None:
        if self._loop is None:
            return
        try:
            self._close_all(SHUTDOWN)
        finally:
            if self._listener is not None:
                self._listener.close()
            self._loop.close()
            self._loop = None
