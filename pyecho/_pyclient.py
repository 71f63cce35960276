"""The echo client of the pure-Python engine: the twin of csrc/client.c.

A blocking client with timeouts. Over TCP it runs the server's framing over
what it sends, so echo() knows how many bytes to wait for and whether the
quit word will end the connection. Over UDP a datagram goes out and one comes
back.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import sys
import time
from collections import deque

from ._config import REPLY_CLOSED, REPLY_OPEN, REPLY_SHORT, Config, sockaddr
from ._errors import UDP_MAX, UDP_RECENT, peek_surplus, tcp_surplus, udp_mismatch
from ._framing import scanner
from ._pycompat import CONNECT_PENDING, MSG_NOSIGNAL, make_selector

TRACK_CHUNK = 64 * 1024

# Not a failure: try again when the selector says so.
_RETRY = (BlockingIOError, InterruptedError)
IN, OUT = selectors.EVENT_READ, selectors.EVENT_WRITE


def _oserror(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class PyClient:
    """A blocking echo client with timeouts, tracking the server's framing so
    echo() knows how many bytes to wait for."""

    def __init__(
        self, cfg: Config, family: int, host: str, port: int, timeout: float | None
    ) -> None:
        self.cfg = cfg
        self.timeout = timeout
        self._scan = scanner(cfg)
        self._cont = False
        self._held = b""  # line mode: sent bytes of an unfinished line
        self._owed = 0  # echo the server will send that was not received
        self._quit_sent = False  # the quit word went out: the server is closing
        self._eof = False
        self._udp = cfg.transport == "udp"
        # UDP: the last datagrams sent (length and hash), to tell a late or
        # duplicated echo of one of them from a wrong answer.
        self._recent: deque[tuple[int, int]] = deque(maxlen=UDP_RECENT)
        self._sock = socket.socket(family, socket.SOCK_DGRAM if self._udp else socket.SOCK_STREAM)
        self._sel: selectors.BaseSelector | None = None
        self._watching = 0  # the events the selector watches for
        try:
            if not self._udp:
                self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if family == socket.AF_INET6:
                # An IPv4-mapped address (::ffff:127.0.0.1) works whatever
                # the system's default, as in csrc/net.c.
                self._sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            self._sock.setblocking(False)
            self._sel = make_selector()
            err = self._sock.connect_ex(sockaddr(family, host, port))
            if err in CONNECT_PENDING:  # EINPROGRESS; EWOULDBLOCK on Windows
                # A failed connect is writable (Windows: in select()'s
                # except set, which the select() selector counts as writable).
                self._wait(OUT)
                err = self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise _oserror(err)
        except BaseException:
            self.close()
            raise

    def _wait(self, events: int, deadline: float | None = None) -> int:
        """Wait for the socket to be ready for events (IN, OUT), until
        deadline (a time.monotonic()) if given, else for the timeout: those
        ready (errors and hang-ups count as both), or TimeoutError."""
        sel = self._sel
        assert sel is not None
        if events != self._watching:
            if self._watching:
                sel.modify(self._sock, events)
            else:
                sel.register(self._sock, events)
            self._watching = events
        if deadline is not None:
            ms: int | None = max(0, round((deadline - time.monotonic()) * 1000))
        else:
            ms = None if self.timeout is None else max(0, round(self.timeout * 1000))
        ready = sel.select(None if ms is None else ms / 1000)
        if not ready:
            raise _oserror(errno.ETIMEDOUT)
        return ready[0][1]

    # ---- UDP: a datagram out, a datagram back ----

    def _udp_send(self, data: bytes) -> None:
        while True:
            try:
                self._sock.send(data, MSG_NOSIGNAL)
                break
            except BlockingIOError:
                self._wait(OUT)
            except OSError as e:
                if e.errno == errno.EMSGSIZE and sys.platform == "darwin":
                    raise OSError(
                        errno.EMSGSIZE,
                        f"{e.strerror}: {len(data)} bytes is more than macOS sends in one "
                        "datagram (sysctl net.inet.udp.maxdgram, 9216 bytes by default)",
                    ) from None
                raise
        self._recent.append((len(data), hash(data)))

    def _udp_recv(self, buf: bytearray | memoryview, deadline: float | None = None) -> int:
        """Wait for one datagram (until deadline, if given); at most len(buf)
        bytes of it in buf, how many. ConnectionRefusedError: nothing listens
        there."""
        while True:
            try:
                return self._sock.recv_into(buf)
            except _RETRY:
                self._wait(IN, deadline)
            except ConnectionResetError:
                # Windows' word for a datagram refused by a closed port.
                raise _oserror(errno.ECONNREFUSED) from None

    def _udp_echo(self, data: bytes) -> tuple[bytes, int]:
        """Drop datagrams already waiting (late or duplicated answers to
        earlier ones), send data, and return the datagram that comes back
        within the timeout. One equal to any of the last UDP_RECENT sent (a
        late or duplicated echo still in flight when this began) is skipped;
        any other is OSError(EPROTO), saying what came."""
        while True:
            try:
                self._sock.recv(1)
            except OSError:  # nothing waiting (or an error, now consumed)
                break
        self._udp_send(data)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        buf = memoryview(bytearray(UDP_MAX))  # room for any datagram, seen whole
        while True:
            n = self._udp_recv(buf, deadline)
            got = buf[:n]
            if got == data:
                return data, REPLY_OPEN
            if (n, hash(got.tobytes())) not in self._recent:
                raise udp_mismatch(data, got)

    # ---- TCP ----

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
            emit, self._cont, quit_ = self._scan(self._cont, buf)
            self._owed += emit
            if quit_:
                self._quit_sent = True
                self._held = b""  # the server drops what follows the quit
                return
            if cfg.mode == "line":
                self._held = buf[emit:]

    def _send_some(self, view: memoryview) -> int:
        try:
            return self._sock.send(view, MSG_NOSIGNAL)
        except _RETRY:
            return 0

    def send(self, data: bytes) -> None:
        if self._udp:
            self._udp_send(data)
            return
        self._track(data)
        view = memoryview(data)
        sent = 0
        while sent < len(view):
            n = self._send_some(view[sent:])
            if not n:  # full: wait until it is not
                self._wait(OUT)
            sent += n

    def recv(self, bufsize: int) -> bytes:
        if self._udp:
            buf = bytearray(bufsize)
            return bytes(buf[: self._udp_recv(buf)])  # the rest of the datagram is gone
        while True:
            self._wait(IN)
            try:
                data = self._sock.recv(bufsize)
            except _RETRY:
                continue
            self._owed = max(0, self._owed - len(data))
            return data

    def _recv_some(self, reply: bytearray, expect: int) -> None:
        # Never more than is still expected; once all is in (after the quit
        # word, waiting for the close), a peek at one byte: any is surplus,
        # left in the socket for the error to show.
        more = len(reply) < expect
        try:
            chunk = self._sock.recv(
                expect - len(reply) if more else 1, 0 if more else socket.MSG_PEEK
            )
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
        if not more:  # more than the framing said the server would send
            raise tcp_surplus(expect, reply, peek_surplus(self._sock.fileno()))
        reply += chunk
        self._owed = max(0, self._owed - len(chunk))

    def _check_surplus(self, reply: bytearray, expect: int) -> None:
        """The whole echo is in: a byte already waiting beyond it is more than
        the framing said the server would send."""
        try:
            extra = self._sock.recv(1, socket.MSG_PEEK)  # non-blocking socket
        except OSError:
            return  # nothing waiting (or a failure the next call reports)
        if extra:
            raise tcp_surplus(expect, reply, peek_surplus(self._sock.fileno()))

    def _echo(self, data: bytes) -> tuple[bytes, int]:
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
                if self._eof:
                    return bytes(reply), REPLY_CLOSED
                self._check_surplus(reply, expect)
                return bytes(reply), REPLY_OPEN
            if sending:  # first try: waiting only when the socket is full
                try:
                    n = self._send_some(view[sent:])
                except (BrokenPipeError, ConnectionResetError):
                    # The server may close on the quit word before taking the rest.
                    if not self._quit_sent:
                        raise
                    n = len(view) - sent
                if n:
                    sent += n
                    continue
            events = (OUT if sending else 0) | (IN if receiving else 0)
            ready = self._wait(events)  # errors and hang-ups: both, seen by send/recv
            if receiving and ready & IN:
                self._recv_some(reply, expect)

    def echo(self, data: bytes) -> tuple[bytes, int]:
        """Send data and receive every echo still owed: (reply, one of REPLY_*).

        Seed mode: one message is one read of at most bufsize bytes, so
        longer data goes in pieces of bufsize bytes, each sent once the echo
        of the one before arrived (as the original client did per word). A
        piece that is the quit word ends it: nothing after it is sent."""
        if self._udp:
            return self._udp_echo(data)
        piece = self.cfg.bufsize
        if self.cfg.mode != "seed" or len(data) <= piece:
            return self._echo(data)
        reply = bytearray()
        for start in range(0, len(data), piece):
            part, status = self._echo(data[start : start + piece])
            reply += part
            if status != REPLY_OPEN:
                return bytes(reply), status
        return bytes(reply), REPLY_OPEN

    @property
    def quit_sent(self) -> bool:
        return self._quit_sent

    def shutdown_write(self) -> None:
        if self._udp:
            raise _oserror(errno.EOPNOTSUPP)  # datagrams have no end of stream
        self._sock.shutdown(socket.SHUT_WR)
        # At EOF the server echoes a partial line too: it is owed now.
        self._owed += len(self._held)
        self._held = b""

    def tls_session(self) -> tuple[str, str | None] | None:
        return None

    def fileno(self) -> int:
        return self._sock.fileno()

    def close(self) -> None:
        if self._sel is not None:
            self._sel.close()
            self._sel = None
        self._sock.close()
