"""The pure-Python engine: the reference implementation, standard library only.

It has the structure of the C core (csrc/server.c, csrc/client.c) function
for function, so either can be read to understand the other: one thread, one
selector, per-connection output bounded by max_pending (backpressure).
"""

from __future__ import annotations

import errno
import os
import select
import selectors
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from ._config import (
    CLOSE_REASONS,
    REPLY_CLOSED,
    REPLY_OPEN,
    REPLY_SHORT,
    Config,
    Event,
    Stats,
    idle_timeout_ms,
)
from ._framing import scan

READ_CHUNK = 64 * 1024  # bytes read at once in raw and line mode
ACCEPT_BURST = 64  # connections accepted per readiness event
ACCEPT_PAUSE_MS = 100  # back-off after running out of descriptors
LINGER_MS = 2000  # longest wait for the peer's EOF after quit
TRACK_CHUNK = 64 * 1024

READ, WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
PEER, QUIT, RESET, SHUTDOWN, IDLE = CLOSE_REASONS

# What the C core treats as "try again later" rather than a failed connection.
_RETRY = (BlockingIOError, InterruptedError)


def _now_ms() -> int:
    return time.monotonic_ns() // 1_000_000


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


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
        self.events = READ
        self.closing: str | None = None  # the close reason once the peer is done
        self.lingering = False  # after quit: output sent and shut, input dropped
        self.cont = False  # line mode: inside a line longer than max_line
        self.id = conn_id
        self.last_active_ms = now  # or, lingering, when the lingering began
        self.held = b""  # line mode: a partial line
        self.out = bytearray()  # echo the client has not taken yet
        self.peer = (peer[0], peer[1])


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
        self._now = _now_ms()
        self._next_id = 0
        self._accept_resume_ms = 0
        self._stop = threading.Event()
        self._conns: OrderedDict[int, _Conn] = OrderedDict()  # least recently active first
        self._lingering: OrderedDict[int, _Conn] = OrderedDict()  # in the order they began
        self._counts = dict.fromkeys(("accepted", "open", "rejected", "bytes_in", "bytes_out"), 0)
        self._closed = dict.fromkeys(CLOSE_REASONS, 0)
        self._sel = selectors.DefaultSelector()
        self._listener = socket.socket(family, socket.SOCK_STREAM)
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            # Restarting right after a stop must not fail on TIME_WAIT sockets.
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind((host, port))
            self._listener.listen(cfg.backlog)
            for s in (self._listener, self._wake_r, self._wake_w):
                s.setblocking(False)
            self._sel.register(self._listener, READ, None)
            self._sel.register(self._wake_r, READ, None)
        except BaseException:
            self.free()
            raise

    # ---- connection lists (oldest first, for timeouts) ----

    def _touch(self, c: _Conn) -> None:
        if self._idle_ms and not c.lingering:
            c.last_active_ms = self._now
            self._conns.move_to_end(c.id)

    # ---- events ----

    def _notify(self, c: _Conn, kind: str, reason: str | None) -> None:
        if self._on_event is not None:
            self._on_event(Event(kind, c.id, c.peer, reason))

    def _conn_close(self, c: _Conn, reason: str) -> None:
        try:
            self._sel.unregister(c.sock)
        except KeyError:  # a KeyboardInterrupt came between accept and register
            pass
        c.sock.close()
        del (self._lingering if c.lingering else self._conns)[c.id]
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
            self._sel.modify(c.sock, want, c)
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
        del self._conns[c.id]
        c.lingering = True
        c.last_active_ms = self._now
        self._lingering[c.id] = c
        self._update_interest(c)

    def _on_lingering_readable(self, c: _Conn) -> None:
        """Lingering: read and drop; the peer's EOF (or failure) ends it."""
        try:
            dropped = c.sock.recv(READ_CHUNK)
        except _RETRY:
            return
        except OSError:
            dropped = b""
        if dropped:
            self._counts["bytes_in"] += len(dropped)
        else:
            self._conn_close(c, QUIT)

    def _finish(self, c: _Conn, reason: str) -> None:
        """The peer is done (EOF or quit): end now or once the queue drains."""
        c.closing = reason
        if not c.out:
            self._conn_done(c, reason)
        else:
            self._update_interest(c)

    def _send(self, c: _Conn, data: bytes | bytearray | memoryview) -> int | None:
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
        cfg = self.cfg
        want = cfg.bufsize if cfg.mode == "seed" else READ_CHUNK
        try:
            chunk = c.sock.recv(want)
        except _RETRY:
            return
        except OSError:
            self._conn_close(c, RESET)
            return
        if not chunk:
            # Half-close: a partial line is still echoed, nothing is lost.
            if not self._echo_out(c, c.held):
                self._conn_close(c, RESET)
            else:
                c.held = b""
                self._finish(c, PEER)
            return
        self._counts["bytes_in"] += len(chunk)
        if self._idle_ms:
            self._touch(c)
        buf = c.held + chunk if c.held else chunk
        emit, c.cont, quit_ = scan(cfg, c.cont, buf)
        if not self._echo_out(c, buf[:emit]):
            self._conn_close(c, RESET)
            return
        if quit_:
            c.held = b""
            self._finish(c, QUIT)
            return
        if cfg.mode == "line":
            c.held = buf[emit:]
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

    # ---- accepting ----

    def _pause_accepting(self) -> None:
        self._sel.unregister(self._listener)
        self._accept_resume_ms = self._now + ACCEPT_PAUSE_MS

    def _add_conn(self, sock: socket.socket, peer: tuple) -> None:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._next_id += 1
        c = _Conn(sock, self._next_id, peer, self._now)
        self._sel.register(sock, READ, c)
        self._conns[c.id] = c
        self._counts["accepted"] += 1
        self._counts["open"] += 1
        self._notify(c, "open", None)

    def _on_acceptable(self) -> None:
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
            served = self._counts["open"] - len(self._lingering)  # lingering ones are done
            if self.cfg.max_clients and served >= self.cfg.max_clients:
                sock.close()
                self._counts["rejected"] += 1
                continue
            self._add_conn(sock, peer)

    # ---- the loop ----

    def _close_expired(self) -> None:
        while self._idle_ms and self._conns:
            oldest = next(iter(self._conns.values()))
            if oldest.last_active_ms + self._idle_ms > self._now:
                break
            self._conn_close(oldest, IDLE)
        while self._lingering:
            oldest = next(iter(self._lingering.values()))
            if oldest.last_active_ms + LINGER_MS > self._now:
                break
            self._conn_close(oldest, QUIT)

    def _close_all(self, reason: str) -> None:
        while self._conns:
            self._conn_close(next(iter(self._conns.values())), reason)
        # Their echo is out and the peer asked to quit: that is how they end.
        while self._lingering:
            self._conn_close(next(iter(self._lingering.values())), QUIT)

    def _next_wait(self, deadline: int | None) -> float | None:
        """How long to sleep: until the deadline, the next idle or linger
        expiry or the end of an accept pause, whichever is first; None for none."""
        until = deadline
        if self._idle_ms and self._conns:
            t = next(iter(self._conns.values())).last_active_ms + self._idle_ms
            until = t if until is None else min(until, t)
        if self._lingering:
            t = next(iter(self._lingering.values())).last_active_ms + LINGER_MS
            until = t if until is None else min(until, t)
        if self._accept_resume_ms:
            t = self._accept_resume_ms
            until = t if until is None else min(until, t)
        if until is None:
            return None
        return max(0, until - self._now) / 1000

    def _dispatch(self, key: selectors.SelectorKey, mask: int) -> None:
        c = key.data
        if c is None:
            if key.fileobj is self._listener:
                self._on_acceptable()
            return  # the wake socket: the stop flag is checked by the loop
        mask &= c.events  # errors and hang-ups surface through recv() or send()
        if mask & WRITE and self._on_writable(c):
            return
        if mask & READ and c.events & READ:
            if c.lingering:
                self._on_lingering_readable(c)
            else:
                self._on_readable(c)

    def _stopped(self) -> bool:
        if not self._stop.is_set():
            return False
        self._close_all(SHUTDOWN)
        # Only now: a stop asked for by a close event belongs to this stop.
        try:
            while self._wake_r.recv(4096):
                pass
        except _RETRY:
            pass
        self._stop.clear()
        return True

    def run(self, timeout: float | None) -> int:
        """Serve for at most timeout seconds (None: until stopped): 1 if the
        time ran out while serving, 0 once stop() was called (every client
        connection is then closed)."""
        self._now = _now_ms()
        deadline = None if timeout is None else self._now + round(timeout * 1000)
        while True:
            if self._stopped():
                return 0
            ready = self._sel.select(self._next_wait(deadline))
            self._now = _now_ms()
            # A connection is only ever closed from its own event here or
            # after the batch, so no event in the batch points at a closed one.
            for key, mask in ready:
                self._dispatch(key, mask)
            self._close_expired()
            if self._accept_resume_ms and self._now >= self._accept_resume_ms:
                self._sel.register(self._listener, READ, None)
                self._accept_resume_ms = 0
            if deadline is not None and self._now >= deadline:
                return 1

    # ---- life cycle ----

    def address(self) -> tuple[str, int]:
        host, port = self._listener.getsockname()[:2]
        return host, port

    def stop(self) -> None:
        self._stop.set()
        try:
            self._wake_w.send(b"\0")
        except _RETRY:
            pass  # already woken

    def stats(self) -> Stats:
        return Stats(closed=dict(self._closed), **self._counts)

    def free(self) -> None:
        try:
            self._close_all(SHUTDOWN)
        finally:
            for s in (self._listener, self._wake_r, self._wake_w):
                s.close()
            self._sel.close()


class PyClient:
    """A blocking echo client with timeouts, tracking the server's framing so
    echo() knows how many bytes to wait for."""

    def __init__(
        self, cfg: Config, family: int, host: str, port: int, timeout: float | None
    ) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self._cont = False
        self._held = b""  # line mode: sent bytes of an unfinished line
        self._owed = 0  # echo the server will send that was not received
        self._quit_sent = False  # the quit word went out: the server is closing
        self._eof = False
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock.setblocking(False)
            err = self._sock.connect_ex((host, port))
            if err == errno.EINPROGRESS:
                self._wait(select.POLLOUT)
                err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise _oserror(err)
        except BaseException:
            self._sock.close()
            raise

    def _wait(self, events: int) -> int:
        """poll() the socket; the events that occurred, or TimeoutError."""
        p = select.poll()
        p.register(self._sock, events)
        ms = None if self.timeout is None else max(0, round(self.timeout * 1000))
        ready = p.poll(ms)
        if not ready:
            raise _oserror(errno.ETIMEDOUT)
        return ready[0][1]

    def _track(self, data: bytes) -> None:
        """Feed bytes about to be sent through the framing: add the echo they
        cause to what is owed; refuse to send after the quit word."""
        cfg = self.cfg
        if self._quit_sent:
            if data:
                raise _oserror(errno.EPIPE)
            return
        if cfg.mode == "raw":
            self._owed += len(data)
            return
        piece = cfg.bufsize if cfg.mode == "seed" else TRACK_CHUNK
        for start in range(0, len(data), piece):
            buf = self._held + data[start : start + piece]
            emit, self._cont, quit_ = scan(cfg, self._cont, buf)
            self._owed += emit
            if quit_:
                self._quit_sent = True
                self._held = b""  # the server drops what follows the quit
                return
            if cfg.mode == "line":
                self._held = buf[emit:]

    def _send_some(self, view: memoryview) -> int:
        try:
            return self._sock.send(view, socket.MSG_NOSIGNAL)
        except _RETRY:
            return 0

    def send(self, data: bytes) -> None:
        self._track(data)
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            self._wait(select.POLLOUT)
            sent += self._send_some(view[sent:])

    def recv(self, bufsize: int) -> bytes:
        while True:
            self._wait(select.POLLIN)
            try:
                data = self._sock.recv(bufsize)
            except _RETRY:
                continue
            self._owed = max(0, self._owed - len(data))
            return data

    def _recv_some(self, reply: bytearray, expect: int) -> None:
        try:
            chunk = self._sock.recv(max(1, expect - len(reply) + self.cfg.max_line))
        except _RETRY:
            return
        except ConnectionResetError:
            # After the quit word the server may reset instead of closing
            # cleanly if it had unread input: the connection is over either way.
            if self._quit_sent and len(reply) == expect:
                self._eof = True
                return
            raise
        if not chunk:
            self._eof = True
            return
        reply += chunk
        self._owed = max(0, self._owed - len(chunk))
        if len(reply) > expect:  # more than the framing said the server would send
            raise _oserror(errno.EPROTO)

    def echo(self, data: bytes) -> tuple[bytes, int]:
        """Send data and receive every echo still owed (for data and earlier
        sends not yet received): (reply, one of REPLY_*)."""
        self._track(data)
        expect = self._owed
        view = memoryview(data)
        reply = bytearray()
        sent = 0
        while True:
            sending = sent < len(view)
            receiving = not self._eof and (len(reply) < expect or self._quit_sent)
            if not receiving and len(reply) < expect:
                return bytes(reply), REPLY_SHORT
            if not receiving and not sending:
                return bytes(reply), REPLY_CLOSED if self._eof else REPLY_OPEN
            events = (select.POLLOUT if sending else 0) | (select.POLLIN if receiving else 0)
            ready = self._wait(events)
            if ready & (select.POLLERR | select.POLLHUP):
                ready |= events  # errors and hang-ups show up through send/recv
            if sending and ready & select.POLLOUT:
                try:
                    sent += self._send_some(view[sent:])
                except (BrokenPipeError, ConnectionResetError):
                    # The server may close on the quit word before taking the rest.
                    if not self._quit_sent:
                        raise
                    sent = len(view)
            if receiving and ready & select.POLLIN:
                self._recv_some(reply, expect)

    @property
    def quit_sent(self) -> bool:
        return self._quit_sent

    def shutdown_write(self) -> None:
        self._sock.shutdown(socket.SHUT_WR)
        # At EOF the server echoes a partial line too: it is owed now.
        self._owed += len(self._held)
        self._held = b""

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        self._sock.close()
