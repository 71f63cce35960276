"""A recording TCP relay: what the pytest plugin puts in front of a server to
see the bytes each client sends, without changing either engine.

Every connection to the tap gets its own connection to the server; bytes are
copied both ways as they come, a half-close is passed on as a half-close and
a reset as a reset, so the server sees what the client did. The tap binds the
upstream socket before connecting it: the server's events name that address,
and ``client_of()`` maps it back to the client's.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._config import numeric_host, sockaddr
from ._pycompat import MSG_NOSIGNAL, make_selector

# Per direction: past this, the tap stops reading that side (backpressure).
BUFFER = 64 * 1024
ACCEPT_PAUSE = 0.1  # seconds, when out of descriptors
_READ, _WRITE = selectors.EVENT_READ, selectors.EVENT_WRITE
_RETRY = (BlockingIOError, InterruptedError)
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def reachable(address: tuple[str, int]) -> tuple[str, int]:
    """Where to connect to a server bound to ``address``: a server on every
    interface is reached on loopback."""
    host, port = address
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host), port


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def socket_address(host: str, port: int) -> tuple[Any, ...]:
    """What bind() and connect() take for a numeric host, an IPv6 scope
    ("fe80::1%eth0") kept as the scope id: a plain (host, port) loses it."""
    return sockaddr(family_of(host), host, port)


def host_port(addr: tuple[Any, ...]) -> tuple[str, int]:
    """A socket's address as the engines write it (their events' peers):
    (host, port), the host with its scope if it has one."""
    return numeric_host(addr), int(addr[1])


class _Broken(Exception):
    """An operation on ``sock`` failed: that side is gone (reset, refused)."""

    def __init__(self, sock: socket.socket) -> None:
        super().__init__()
        self.sock = sock


class Transcript(bytes):
    """The first bytes a client sent on one connection (bytes), with
    ``total``, how many it sent in all, and ``truncated`` if that is more."""

    total: int

    def __new__(cls, data: bytes, total: int) -> Transcript:
        self = super().__new__(cls, data)
        self.total = total
        return self

    @property
    def truncated(self) -> bool:
        return self.total > len(self)


@dataclass(eq=False)
class _Pipe:
    client: socket.socket
    upstream: socket.socket
    client_peer: tuple[str, int]
    connected: bool = False
    # Per direction ("c": client to server, "u": server to client): what waits
    # to be sent on, and whether that side sent its EOF.
    to_upstream: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    client_eof: bool = False
    upstream_eof: bool = False
    sent: bytearray = field(default_factory=bytearray)  # the transcript, bounded
    total: int = 0
    conn_id: int | None = None  # the server's, once its open event named us
    closed: bool = False


def _reset(sock: socket.socket) -> None:
    """Close with a reset (RST), as a peer that aborts does."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


class Tap:
    """Listens on ``address`` (same host as ``upstream``, a free port) and
    relays every connection to ``upstream``, keeping the first ``limit``
    bytes each client sends. If the relay itself fails, it closes every
    connection and calls ``on_error`` with the exception (on its thread)."""

    def __init__(
        self,
        upstream: tuple[str, int],
        limit: int,
        on_error: Callable[[BaseException], None],
    ) -> None:
        self._on_error = on_error
        host = upstream[0]
        self._family = family_of(host)
        self._upstream = socket_address(*reachable(upstream))
        # Where the upstream sockets bind: the server's host, so its events
        # name an address the tap can look up.
        self._upstream_local = socket_address(reachable(upstream)[0], 0)
        self._limit = limit
        self._lock = threading.Lock()  # guards _by_local and the transcripts
        self._by_local: dict[tuple[str, int], _Pipe] = {}
        self._pipes: list[_Pipe] = []
        self._hidden: set[int] = set()  # conn_ids left out of transcripts()
        self._sel = make_selector()
        self._listener = socket.socket(self._family, socket.SOCK_STREAM)
        self._wake_r, self._wake_w = socket.socketpair()
        try:
            self._listener.bind(socket_address(host, 0))
            self._listener.listen(128)
            for s in (self._listener, self._wake_r, self._wake_w):
                s.setblocking(False)
            self._sel.register(self._listener, _READ)
            self._sel.register(self._wake_r, _READ)
        except BaseException:
            self._close_sockets()
            raise
        self.address: tuple[str, int] = host_port(self._listener.getsockname())
        self._stopping = False
        self._resume_at: float | None = None  # accepting paused until then
        self._thread = threading.Thread(target=self._run, name="pyecho-tap", daemon=True)
        self._thread.start()

    # ---- what the plugin asks, from any thread ----

    def client_of(self, local: tuple[str, int], conn_id: int) -> tuple[str, int] | None:
        """The client behind the server's connection from ``local``; remembers
        the server's ``conn_id`` for it."""
        with self._lock:
            pipe = self._by_local.get(local)
            if pipe is None:
                return None
            pipe.conn_id = conn_id
            return pipe.client_peer

    def hide(self, conn_id: int) -> None:
        """Leave the server's connection ``conn_id`` out of transcripts(): one
        of the plugin's own, not a client's."""
        with self._lock:
            self._hidden.add(conn_id)

    def transcripts(self) -> dict[int, Transcript]:
        """conn_id -> what the client sent, for connections the server opened."""
        with self._lock:
            return {
                p.conn_id: Transcript(bytes(p.sent), p.total)
                for p in self._pipes
                if p.conn_id is not None and p.conn_id not in self._hidden
            }

    def close(self) -> None:
        """Stop relaying and close every socket (clients get EOF). Twice is fine."""
        if self._thread.is_alive():
            self._stopping = True
            try:
                self._wake_w.send(b"\0")
            except OSError:
                pass
            self._thread.join()

    # ---- the relay loop, on its own thread ----

    def _run(self) -> None:
        try:
            while not self._stopping:
                wait = None
                if self._resume_at is not None:
                    wait = self._resume_at - time.monotonic()
                    if wait <= 0:
                        self._sel.register(self._listener, _READ)
                        self._resume_at = wait = None
                for key, mask in self._sel.select(wait):
                    if key.fileobj is self._listener:
                        self._accept()
                    elif key.fileobj is not self._wake_r and not key.data.closed:
                        # (closed: by an earlier event of the same batch)
                        self._service(key.data, key.fileobj, mask)
        except Exception as e:  # noqa: BLE001 - a bug here must fail the test, not vanish
            self._on_error(e)
        finally:
            for pipe in self._pipes:
                for s in (pipe.client, pipe.upstream):
                    s.close()
            self._close_sockets()

    def _close_sockets(self) -> None:
        self._sel.close()
        for s in (self._listener, self._wake_r, self._wake_w):
            s.close()

    def _pause_accepting(self) -> None:
        """Out of descriptors: leave new connections in the backlog for a
        while, as the engines do, rather than spin on a readable listener."""
        self._sel.unregister(self._listener)
        self._resume_at = time.monotonic() + ACCEPT_PAUSE

    def _accept(self) -> None:
        while True:
            try:
                client, peer = self._listener.accept()
            except _RETRY:
                return
            except OSError as e:
                if e.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting()
                    return
                continue  # that connection is gone (ECONNABORTED, say)
            client.setblocking(False)
            try:
                upstream = self._open_upstream()
            except OSError as e:
                _reset(client)
                if e.errno in _OUT_OF_RESOURCES:
                    self._pause_accepting()
                    return
                continue
            local = host_port(upstream.getsockname())
            pipe = _Pipe(client, upstream, host_port(peer))
            # Known before the server can accept it, so its open event finds us.
            with self._lock:
                self._by_local[local] = pipe
                self._pipes.append(pipe)
            rc = upstream.connect_ex(self._upstream)
            if rc not in (0, errno.EINPROGRESS):  # the server is gone
                self._drop(pipe, reset=client)
                continue
            self._sel.register(upstream, _WRITE, pipe)

    def _open_upstream(self) -> socket.socket:
        """A socket for the server, bound so its address is known."""
        upstream = socket.socket(self._family, socket.SOCK_STREAM)
        try:
            upstream.setblocking(False)
            upstream.bind(self._upstream_local)
        except BaseException:
            upstream.close()
            raise
        return upstream

    def _service(self, pipe: _Pipe, sock: object, mask: int) -> None:
        try:
            if not pipe.connected:
                if pipe.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    raise _Broken(pipe.upstream)
                pipe.connected = True
                self._sel.register(pipe.client, _READ, pipe)
            elif sock is pipe.client:
                if mask & _READ:
                    self._read_client(pipe)
                if mask & _WRITE:
                    self._flush(pipe.client, pipe.to_client, pipe.upstream_eof)
            else:
                if mask & _READ:
                    self._read_upstream(pipe)
                if mask & _WRITE:
                    self._flush(pipe.upstream, pipe.to_upstream, pipe.client_eof)
        except _Broken as broken:
            self._abort(pipe, broken.sock)
            return
        if pipe.client_eof and pipe.upstream_eof and not pipe.to_client and not pipe.to_upstream:
            self._drop(pipe)  # both sides are done: an orderly close
        else:
            self._update(pipe)

    def _read_client(self, pipe: _Pipe) -> None:
        try:
            data = pipe.client.recv(BUFFER)
        except _RETRY:
            return
        except OSError as e:
            raise _Broken(pipe.client) from e
        if not data:
            pipe.client_eof = True
        else:
            with self._lock:
                pipe.total += len(data)
                room = self._limit - len(pipe.sent)
                if room > 0:
                    pipe.sent += data[:room]
            pipe.to_upstream += data
        self._flush(pipe.upstream, pipe.to_upstream, pipe.client_eof)

    def _read_upstream(self, pipe: _Pipe) -> None:
        try:
            data = pipe.upstream.recv(BUFFER)
        except _RETRY:
            return
        except OSError as e:
            raise _Broken(pipe.upstream) from e
        if not data:
            pipe.upstream_eof = True
        else:
            pipe.to_client += data
        self._flush(pipe.client, pipe.to_client, pipe.upstream_eof)

    @staticmethod
    def _flush(sock: socket.socket, buf: bytearray, eof: bool) -> None:
        """Send what we can of buf; once it is empty after the other side's
        EOF, pass the EOF on as a half-close."""
        try:
            if buf:
                del buf[: sock.send(buf, MSG_NOSIGNAL)]
            if eof and not buf:
                sock.shutdown(socket.SHUT_WR)
        except _RETRY:
            pass
        except OSError as e:
            raise _Broken(sock) from e

    def _update(self, pipe: _Pipe) -> None:
        """Read a side while the other can take more; write while owed."""
        for sock, eof, inbox, outbox in (
            (pipe.client, pipe.client_eof, pipe.to_upstream, pipe.to_client),
            (pipe.upstream, pipe.upstream_eof, pipe.to_client, pipe.to_upstream),
        ):
            mask = (_READ if not eof and len(inbox) < BUFFER else 0) | (_WRITE if outbox else 0)
            key = self._sel.get_map().get(sock)
            if key is None and mask:
                self._sel.register(sock, mask, pipe)
            elif key is not None and not mask:
                self._sel.unregister(sock)
            elif key is not None and key.events != mask:
                self._sel.modify(sock, mask, pipe)

    def _abort(self, pipe: _Pipe, failed: socket.socket) -> None:
        """One side failed (reset, refused): the other side gets what is owed
        to it if it can take it at once, then a reset."""
        if failed is pipe.client:
            other, owed = pipe.upstream, pipe.to_upstream
        else:
            other, owed = pipe.client, pipe.to_client
        if owed:
            try:
                other.send(owed, MSG_NOSIGNAL)
            except OSError:
                pass
        owed.clear()
        self._drop(pipe, reset=other)

    def _drop(self, pipe: _Pipe, reset: socket.socket | None = None) -> None:
        pipe.closed = True
        for s in (pipe.client, pipe.upstream):
            if self._sel.get_map().get(s) is not None:
                self._sel.unregister(s)
            if s is reset:
                _reset(s)
            else:
                s.close()
        pipe.to_client.clear()
        pipe.to_upstream.clear()
