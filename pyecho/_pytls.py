"""The Python engine's TLS layer: the twin of csrc/tls.c.

A connection's TLS is an ``ssl.SSLObject`` over two memory BIOs: the bytes
the socket reads go in, the records it must write come out. The server's
read and write paths keep moving raw bytes on the socket (so faults such as
``slice`` and ``rate`` act on the records on the wire), and this layer sits
between those bytes and the echo: input is decrypted before the framing sees
it, echo is encrypted as it enters the output queue.
"""

from __future__ import annotations

import errno
import os
import socket
import ssl

from ._config import Config
from ._errors import SHOWN, tcp_surplus
from ._pyclient import IN, OUT, PyClient


class TlsConn:
    """One connection's TLS state, server side."""

    __slots__ = ("obj", "_in", "_out", "ready", "started", "stalled", "notified")

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self._in = ssl.MemoryBIO()
        self._out = ssl.MemoryBIO()
        self.obj = ctx.wrap_bio(self._in, self._out, server_side=True)
        self.ready = False  # the handshake is complete
        self.started = False  # its first bytes came (the handshake faults were decided)
        self.stalled = False  # handshake_stall: input is dropped, nothing answered
        self.notified = False  # our close_notify is queued

    def feed(self, raw: bytes) -> None:
        """Bytes read from the socket."""
        self._in.write(raw)

    def handshake(self) -> bool:
        """Move the handshake on: True once complete. ssl.SSLError when it
        failed (its alert, if any, is then in take())."""
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            return False
        self.ready = True
        return True

    def read(self, n: int) -> bytes | None:
        """Up to n bytes of plaintext (one record's at most); None when more
        input is needed, b"" at the peer's close_notify. ssl.SSLError on a
        bad record."""
        try:
            return self.obj.read(n)
        except ssl.SSLWantReadError:
            return None
        except ssl.SSLZeroReturnError:
            return b""

    def seal(self, data: bytes | bytearray) -> bytes:
        """data as records, with anything else waiting to go before it."""
        if data:
            self.obj.write(data)
        return self._out.read()

    def take(self) -> bytes:
        """Records waiting to be written (handshake, tickets, alerts)."""
        return self._out.read()

    def close_notify(self) -> bytes:
        """Our close_notify, as bytes to write."""
        try:
            self.obj.unwrap()
        except ssl.SSLError:  # SSLWantReadError: the peer's is not awaited
            pass
        return self._out.read()


class PyTlsClient(PyClient):
    """The Python client over TLS (Python's ssl with the caller's context):
    a non-blocking SSLSocket, waited on with poll() like the plain client,
    plaintext already decrypted (``pending()``) counting as readable."""

    def __init__(
        self,
        cfg: Config,
        family: int,
        host: str,
        port: int,
        timeout: float | None,
        *,
        context: ssl.SSLContext,
        server_hostname: str,
    ) -> None:
        super().__init__(cfg, family, host, port, timeout)
        try:
            self._sock = context.wrap_socket(
                self._sock, server_hostname=server_hostname, do_handshake_on_connect=False
            )
            while True:
                try:
                    self._sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    self._wait(IN)
                except ssl.SSLWantWriteError:
                    self._wait(OUT)
        except BaseException:
            self._sock.close()
            raise

    def tls_session(self) -> tuple[str, str | None] | None:
        return self.tls_socket.version() or "", self.tls_socket.selected_alpn_protocol()

    @property
    def tls_socket(self) -> ssl.SSLSocket:
        assert isinstance(self._sock, ssl.SSLSocket)
        return self._sock

    def _wait(self, events: int, deadline: float | None = None) -> int:
        if events & IN and self.tls_socket.pending():
            return IN
        return super()._wait(events, deadline)

    def _send_some(self, view: memoryview) -> int:
        try:
            return self._sock.send(view)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return 0
        except ssl.SSLEOFError as e:
            # CPython's word for a write into a connection the server closed
            # (EPIPE): the error plain TCP and the C client give.
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE)) from e

    def _recv_tls(self, n: int) -> bytes | None:
        """Up to n bytes; b"" at the end; None: nothing yet."""
        try:
            return self._sock.recv(n)
        except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return None
        except ssl.SSLWantWriteError:
            self._wait(OUT)
            return None

    def recv_nowait(self, bufsize: int) -> bytes | None:
        """Up to bufsize bytes if there are any now; None when what made the
        socket readable carried no data (TLS 1.3 session tickets, say)."""
        data = self._recv_tls(bufsize)
        if data:
            self._owed = max(0, self._owed - len(data))
        return data

    def recv(self, bufsize: int) -> bytes:
        while True:
            self._wait(IN)
            data = self._recv_tls(bufsize)
            if data is None:
                continue
            self._owed = max(0, self._owed - len(data))
            return data

    def _recv_some(self, reply: bytearray, expect: int) -> None:
        # Once all is in (after the quit word, waiting for the close), any
        # byte more is surplus.
        try:
            chunk = self._recv_tls(max(1, expect - len(reply)))
        except ConnectionResetError:
            if self._quit_sent and len(reply) == expect:
                self._eof = True
                return
            raise
        if chunk is None:
            return
        if not chunk:
            self._eof = True
            return
        if len(reply) >= expect:  # more than the framing said the server would send
            raise tcp_surplus(expect, reply, chunk)
        reply += chunk
        self._owed = max(0, self._owed - len(chunk))

    def _check_surplus(self, reply: bytearray, expect: int) -> None:
        """The whole echo is in: plaintext already decrypted beyond it is
        more than the framing said the server would send."""
        pending = self.tls_socket.pending()
        if pending:  # as much as a message shows, as the C client takes
            raise tcp_surplus(expect, reply, self._sock.recv(min(pending, SHOWN)))

    def shutdown_write(self) -> None:
        """Half-close: the TCP FIN alone. OpenSSL reads nothing more once it
        sent its close_notify, and the rest of the echo is still to come; a
        pyecho server takes the FIN as the end of input (docs/PROTOCOL.md,
        "TLS")."""
        socket.socket.shutdown(self.tls_socket, socket.SHUT_WR)
        self._owed += len(self._held)
        self._held = b""
