"""The echo server of the pure-Python engine: the twin of csrc/server.c.

It has the structure of the C server function for function, over the same
event loop (pyecho/_pyloop.py, the twin of csrc/loop.c), so either can be
read to understand the other: one thread, per-connection output bounded by
max_pending (backpressure), idle and linger deadlines in lists ordered by
time, each driven by one loop timer at its oldest entry's deadline. Faults
(pyecho/_pyfaults.py) act on the echo path of connections that have fault
state; UDP (pyecho/_pyudp.py) uses the same loop with one socket.
"""

from __future__ import annotations

import errno
import socket
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import partial
from typing import Any

from ._config import (
    CLOSE_REASONS,
    DROP_REASONS,
    Config,
    Event,
    Stats,
    idle_timeout_ms,
    numeric_host,
    sockaddr,
)
from ._faults import FaultsInts
from ._framing import scanner
from ._pycompat import LINGER_RESET, MSG_NOSIGNAL, reuse_address, udp_no_connreset
from ._pyfaults import FxQueue, Rng, chance, delay, faults_check, faults_off
from ._pyloop import READ, WRITE, Loop, Timer
from ._pytls import TlsConn
from ._pyudp import UdpEcho
from ._signals import SignalsDeferred
from ._tls import TlsFiles, server_context

READ_CHUNK = 64 * 1024  # bytes read at once in raw and line mode
ACCEPT_BURST = 64  # connections accepted per readiness event
ACCEPT_PAUSE_MS = 100  # back-off after running out of descriptors
LINGER_MS = 2000  # longest wait for the peer's EOF after quit
MAKE_ROOM_READS = 16  # reads that drain a lingering connection closed early
RATE_BURST_MS = 10  # faults: a rate-limited send waits for this much

# What a connection's fault `wait` timer ends.
ACCEPT_WAIT, CLOSE_WAIT, HANDSHAKE_WAIT = 1, 2, 3

PEER, QUIT, RESET, SHUTDOWN, IDLE, LIMIT, RESET_AFTER, REFUSED, HANDSHAKE = CLOSE_REASONS

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
        "opened_ms",
        "fx",
        "tls",
    )

    def __init__(self, sock: socket.socket, conn_id: int, peer: tuple[Any, ...], now: int):
        self.sock = sock
        self.events = READ  # what the loop watches now
        self.closing: str | None = None  # the close reason once the peer is done
        self.lingering = False  # after quit: output sent and shut, input dropped
        self.cont = False  # line mode: inside a line longer than max_line
        self.id = conn_id
        self.last_active_ms = now  # or, lingering, when the lingering began
        self.held = b""  # line mode: a partial line, fewer than max_line bytes
        self.out = bytearray()  # echo the client has not taken yet
        self.peer = peer_of(peer)
        self.opened_ms = now
        self.fx: _ConnFx | None = None  # fault state; None until faults apply to it
        self.tls: TlsConn | None = None  # TLS state (_pytls.py); None on a plain server


def peer_of(addr: tuple[Any, ...]) -> tuple[str, int]:
    """(host, port) as the C core formats it (a scope kept)."""
    return numeric_host(addr), addr[1]


def _reason(c: _Conn) -> str:
    """Why a connection that is ending (closing or lingering) ends."""
    assert c.closing is not None
    return c.closing


class _ConnFx:
    """A connection's faults: echo held for latency, the send gate (rate,
    slice), its reset and wait timers, and its own random generator."""

    __slots__ = (
        "rng",
        "delayed",
        "release",
        "gate",
        "reset",
        "wait",
        "next_send_ms",
        "tokens",
        "tokens_ms",
        "echoed",
        "stalled",
        "waiting",
        "close_waited",
    )

    def __init__(self, srv: PyServer, c: _Conn, seed: int) -> None:
        self.rng = Rng(seed, c.id)
        self.delayed = FxQueue()  # echo held until its time (latency, jitter)
        self.release = Timer(partial(srv._fx_progress, c))  # the head of `delayed` is due
        self.gate = Timer(partial(srv._fx_progress, c))  # pending: sending waits
        self.reset = Timer(partial(srv._conn_reset, c, RESET_AFTER))
        self.wait = Timer(partial(srv._on_fx_wait, c))  # accept_delay, then close_delay
        self.next_send_ms = 0  # slice_delay: not before
        self.tokens = 0  # rate: thousandths of a byte
        self.tokens_ms = 0  # 0: the first refill finds a second gone (full)
        self.echoed = 0  # bytes let into the echo: limit, stall_after
        # Echo past stall_after, kept in order until the stall lifts; the
        # connection is not read meanwhile.
        self.stalled = bytearray()
        self.waiting = 0  # 0, ACCEPT_WAIT or CLOSE_WAIT while `wait` runs
        self.close_waited = False  # close_delay already spent


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
        self._cut_short = False  # an exception ended the last run(): timers may be lost
        self._active: OrderedDict[int, _Conn] = OrderedDict()  # least recently active first
        self._lingering: OrderedDict[int, _Conn] = OrderedDict()  # in the order they began
        self._counts = dict.fromkeys(("accepted", "open", "rejected", "bytes_in", "bytes_out"), 0)
        self._closed = dict.fromkeys(CLOSE_REASONS, 0)
        self._idle_timer = Timer(self._on_idle_timer)
        self._linger_timer = Timer(self._on_linger_timer)
        self._accept_timer = Timer(self._on_accept_resume)
        self._counts.update(datagrams_in=0, datagrams_out=0)
        self._dropped = [0] * len(DROP_REASONS)
        self._faults: FaultsInts | None = None  # in effect (loop thread)
        # From set_faults(), any thread: None, or a 1-tuple (None: faults off).
        self._pending_faults: tuple[FaultsInts | None] | None = None
        self._faults_lock = threading.Lock()
        self._udp: UdpEcho | None = None
        self._tls: ssl.SSLContext | None = None  # TLS for new connections
        self._udp_release = Timer(self._on_udp_release)  # the next held datagram is due
        self._freed = False  # free() was called: the loop and listener are closed
        self._loop = loop = Loop()
        listener: socket.socket | None = None
        try:
            udp = cfg.transport == "udp"
            if udp:
                self._udp = UdpEcho(cfg, self._counts, self._dropped, self._on_drop)
            listener = socket.socket(family, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
            if not udp:
                # Restarting right after a stop must not fail on TIME_WAIT sockets.
                reuse_address(listener)
            else:
                udp_no_connreset(listener)
            if family == socket.AF_INET6:
                # Dual stack whatever the system default: "::" serves IPv4 as well.
                listener.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            listener.bind(sockaddr(family, host, port))
            if self._udp is not None:
                self._udp.bind(listener)
            if not udp:
                listener.listen(cfg.backlog)
            listener.setblocking(False)
            loop.io_start(listener, READ, self._on_datagrams if udp else self._on_acceptable)
        except BaseException:
            self._freed = True
            if listener is not None:
                listener.close()
            loop.close()
            raise
        self._listener = listener

    # ---- connection lists (oldest first, for timeouts) ----

    def _touch(self, c: _Conn) -> None:
        # A TLS handshake is not activity: it must end within idle_timeout.
        if self._idle_ms and not c.lingering and (c.tls is None or c.tls.ready):
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
        self._fx_free(c)

    def _conn_reset(self, c: _Conn, reason: str) -> None:
        """Close with a reset (RST) instead of a FIN: SO_LINGER with no time."""
        try:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RESET)
        except OSError:
            pass
        self._conn_close(c, reason)

    def _queued(self, c: _Conn) -> int:
        """Echo not yet handed to the kernel: queued, and held by faults."""
        fx = c.fx
        return len(c.out) + (fx.delayed.cost + len(fx.stalled) if fx is not None else 0)

    def _update_interest(self, c: _Conn) -> None:
        """Watch for input while the peer may still send, the queue has room
        and no stall holds the echo (or, lingering, for its EOF); for output
        while anything is queued and no fault holds sending back. Nothing
        while a fault makes it wait."""
        fx = c.fx
        want = 0
        if fx is None:
            if c.lingering or (c.closing is None and len(c.out) < self.cfg.max_pending):
                want |= READ
            if c.out:
                want |= WRITE
        elif not fx.waiting:
            if c.lingering or (
                c.closing is None
                and len(c.out) + fx.delayed.cost + len(fx.stalled) < self.cfg.max_pending
                and not self._fx_stalled(fx)
            ):
                want |= READ
            if c.out and not fx.gate.pending:
                want |= WRITE
        if want != c.events:
            self._loop.io_set(c.sock, want)
            c.events = want

    def _conn_done(self, c: _Conn, reason: str) -> None:
        """All echo is out and the connection ends. After the quit word (or
        the limit fault) the peer may still be sending, and close() with
        unread input answers with a reset that destroys echo still in flight
        to it. So linger instead: shut our side (the FIN follows the echo),
        drop what the peer sends, and close at its EOF or after LINGER_MS.
        The close_delay fault makes any of these ends wait first."""
        fx, f = c.fx, self._faults
        if fx is not None and f is not None and f.close_delay_ms > 0 and not fx.close_waited:
            fx.close_waited = True
            fx.waiting = CLOSE_WAIT
            self._loop.timer_start(fx.wait, self._loop.now + f.close_delay_ms)
            self._update_interest(c)
            return
        # TLS: a close the server decides sends close_notify first (it ends
        # once that is out too).
        t = c.tls
        if t is not None and t.ready and not t.notified and reason in (PEER, QUIT, LIMIT):
            t.notified = True
            c.out += t.close_notify()
            if not self._flush_out(c):
                self._conn_close(c, RESET)
                return
            if c.out:
                self._update_interest(c)
                return
        if reason not in (QUIT, LIMIT):
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
        """Lingering: read and drop; the peer's EOF (or failure) ends it, for
        the reason it was ending (quit, limit)."""
        if not self._drop_input(c, 1):
            self._conn_close(c, _reason(c))

    def _conn_settle(self, c: _Conn) -> bool:
        """The queues changed: end the connection if it was ending and all
        its echo is out (and no fault makes it wait), else watch what it
        needs. True if it was closed or ended."""
        if (
            c.closing is not None
            and not c.lingering
            and not self._queued(c)
            and (c.fx is None or not c.fx.waiting)
        ):
            self._conn_done(c, _reason(c))
            return True
        self._update_interest(c)
        return False

    def _finish(self, c: _Conn, reason: str) -> None:
        """The peer is done (EOF or quit) or the limit is reached: end now or
        once the queue drains."""
        c.held = b""
        c.closing = reason
        if not self._queued(c):
            self._conn_done(c, reason)
        else:
            self._update_interest(c)

    # ---- faults on the echo path ----

    def _fx_attach(self, c: _Conn) -> _ConnFx:
        assert self._faults is not None
        c.fx = fx = _ConnFx(self, c, self._faults.seed)
        return fx

    def _fx_free(self, c: _Conn) -> None:
        fx, c.fx = c.fx, None
        if fx is not None:
            loop = self._loop
            for timer in (fx.release, fx.gate, fx.reset, fx.wait):
                loop.timer_stop(timer)

    @staticmethod
    def _fx_bucket_cap(rate: int) -> int:
        """Rate: a burst is RATE_BURST_MS of the rate (1 byte at least).
        Tokens are thousandths of a byte: the rate is bytes per second."""
        return max(rate * RATE_BURST_MS, 1000)

    def _fx_refill(self, fx: _ConnFx, rate: int, now: int) -> None:
        cap = self._fx_bucket_cap(rate)
        elapsed = now - fx.tokens_ms
        fx.tokens = cap if elapsed >= RATE_BURST_MS + 1000 else min(cap, fx.tokens + elapsed * rate)
        fx.tokens_ms = now

    def _fx_flush(self, c: _Conn) -> bool:
        """Send what the faults let go now (rate, slice); False if the
        connection failed."""
        f, fx, now = self._faults, c.fx, self._loop.now
        assert fx is not None
        while c.out and not fx.gate.pending:
            n = len(c.out)
            if now < fx.next_send_ms:
                self._loop.timer_start(fx.gate, fx.next_send_ms)
                return True
            if f is not None and f.slice and n > f.slice:
                n = f.slice
            if f is not None and f.rate:
                self._fx_refill(fx, f.rate, now)
                avail = fx.tokens // 1000
                want = min(self._fx_bucket_cap(f.rate) // 1000, n)
                if avail < want:  # wait until a burst's worth (or all) may go
                    wait = -(-(want * 1000 - fx.tokens) // f.rate)
                    self._loop.timer_start(fx.gate, now + wait)
                    return True
                n = min(n, avail)
            sent = self._send(c, c.out if n == len(c.out) else c.out[:n])
            if sent is None:
                return False
            if sent == 0:
                return True  # the socket is full: wait until it is writable
            del c.out[:sent]
            if f is not None and f.rate:
                fx.tokens -= sent * 1000
            if f is not None and f.slice and f.slice_delay_ms and c.out:
                fx.next_send_ms = now + f.slice_delay_ms
            if sent < n:
                return True
        return True

    def _fx_release_due(self, c: _Conn) -> None:
        """Move the echo that is due from `delayed` to the output queue."""
        fx, now = c.fx, self._loop.now
        assert fx is not None
        delayed = fx.delayed
        while delayed and delayed.head.due_ms <= now:
            self._out_add(c, delayed.pop().data)
        if delayed:
            self._loop.timer_start(fx.release, delayed.head.due_ms)

    def _fx_progress(self, c: _Conn) -> bool:
        """After the queues changed: send, then end the connection if it was
        ending and everything is out, else watch what is needed. True if it
        was closed (or ended)."""
        self._fx_release_due(c)
        if not self._fx_flush(c):
            self._conn_close(c, RESET)
            return True
        return self._conn_settle(c)

    def _fx_stalled(self, fx: _ConnFx) -> bool:
        """stall_after holds the echo back: the connection must not be read."""
        f = self._faults
        return bool(fx.stalled) or (
            f is not None and f.stall_after >= 0 and fx.echoed >= f.stall_after
        )

    def _fx_echo(self, c: _Conn, data: bytes | bytearray) -> int:
        """Echo data through the faults: stall_after and limit cut it, latency
        and jitter hold it, rate and slice pace it (_fx_flush). What the stall
        cuts off is kept, in order, until the stall lifts (_fx_update); the
        connection is not read meanwhile, so the peer's sends wait in the
        kernel as with a stalled peer. 0, 1 when the limit is reached (the
        caller ends the connection), or -1 on failure."""
        f, fx = self._faults, c.fx
        assert f is not None and fx is not None
        if fx.stalled:  # behind what is stalled already: it waits too
            fx.stalled += data
            return 0
        n = len(data)
        limit_reached = 0
        if f.stall_after >= 0 and fx.echoed + n > f.stall_after:
            n = max(0, f.stall_after - fx.echoed)
        if f.limit >= 0 and fx.echoed + n >= f.limit:
            # set_faults() may have lowered it below what was echoed already;
            # what follows the limit is never echoed, stalled or not.
            n = max(0, f.limit - fx.echoed)
            limit_reached = 1
        elif n < len(data):
            fx.stalled += data[n:]
        fx.echoed += n
        if n < len(data):
            data = data[:n]
        if n and (f.latency_ms or f.jitter_ms):
            fx.delayed.push(self._loop.now + delay(fx.rng, f), data, merge=True)
            if not fx.release.pending:
                self._loop.timer_start(fx.release, fx.delayed.head.due_ms)
        else:
            self._out_add(c, data)
        if not self._fx_flush(c):
            return -1
        return limit_reached

    def _on_fx_wait(self, c: _Conn) -> None:
        """accept_delay is over (serve it now), or close_delay (end it now)."""
        fx = c.fx
        assert fx is not None
        was, fx.waiting = fx.waiting, 0
        if was == CLOSE_WAIT:
            self._conn_done(c, _reason(c))
        elif was == HANDSHAKE_WAIT:
            self._tls_progress(c)
        else:
            self._fx_progress(c)

    def _fx_update(self, c: _Conn) -> bool:
        """Bring a connection in line with the server's faults, new or
        changed: reseed nothing (its generator is its own), re-arm
        reset_after from when it opened, release held echo no later than the
        new latency allows (at once with none), reopen the send gate, and echo
        what a stall kept (after the held echo: order is kept). True if it
        was closed."""
        f, fx, loop = self._faults, c.fx, self._loop
        now = loop.now
        if f is None and fx is None:
            return False
        if fx is None:
            fx = self._fx_attach(c)
        if f is not None and f.reset_after_ms >= 0:
            loop.timer_start(fx.reset, max(c.opened_ms + f.reset_after_ms, now))
        else:
            loop.timer_stop(fx.reset)
        fx.delayed.hurry(now if f is None else now + f.latency_ms + f.jitter_ms)
        if fx.delayed:
            loop.timer_stop(fx.release)
        loop.timer_stop(fx.gate)
        fx.next_send_ms = now
        if fx.waiting == ACCEPT_WAIT and (f is None or f.accept_delay_ms == 0):
            loop.timer_stop(fx.wait)
            fx.waiting = 0
        if self._fx_progress(c):
            return True
        if fx.waiting == HANDSHAKE_WAIT and (f is None or f.handshake_delay_ms == 0):
            loop.timer_stop(fx.wait)
            fx.waiting = 0
            if self._tls_progress(c):
                return True
        return self._fx_unstall(c)

    def _fx_unstall(self, c: _Conn) -> bool:
        """The faults changed: echo what a stall kept, after everything before
        it, through the new faults (a stall still in effect keeps what is past
        it again). True if the connection was closed or ended."""
        fx = c.fx
        assert fx is not None
        if not fx.stalled:
            return False
        kept, fx.stalled = fx.stalled, bytearray()
        if self._faults is not None:
            rc = self._fx_echo(c, kept)
        else:
            self._out_add(c, kept)
            rc = 0 if self._fx_flush(c) else -1
        if rc < 0:
            self._conn_close(c, RESET)
            return True
        if rc:
            self._finish(c, LIMIT)
            return True
        return self._conn_settle(c)

    # ---- the echo path ----

    def _out_add(self, c: _Conn, data: bytes | bytearray) -> None:
        """Echo data into the output queue (as TLS records on a TLS connection)."""
        if c.tls is None:
            c.out += data
        else:
            self._counts["bytes_out"] += len(data)  # TLS: the echo, not its records
            c.out += c.tls.seal(data)

    def _send(self, c: _Conn, data: bytes | bytearray) -> int | None:
        """Bytes sent now (0 if the socket is full), or None if it failed."""
        try:
            n = c.sock.send(data, MSG_NOSIGNAL)
        except _RETRY:
            return 0
        except OSError:
            return None
        if c.tls is None:
            self._counts["bytes_out"] += n
        return n

    def _flush_out(self, c: _Conn) -> bool:
        """Write what can go now; False if the connection failed."""
        if c.fx is not None:
            return self._fx_flush(c)
        while c.out:
            n = self._send(c, c.out)
            if n is None:
                return False
            if n == 0:
                return True
            del c.out[:n]
        return True

    def _echo_out(self, c: _Conn, data: bytes) -> int:
        """Echo data: straight to the socket when nothing is queued before it.
        0, 1 when the limit fault is reached, or -1 on failure."""
        if c.fx is not None:
            if self._faults is not None:
                return self._fx_echo(c, data)
            self._out_add(c, data)
            return 0 if self._fx_flush(c) else -1
        if c.tls is not None:
            self._out_add(c, data)
            return 0 if self._flush_out(c) else -1
        if not c.out and data:
            n = self._send(c, data)
            if n is None:
                return -1
            if n == len(data):
                return 0  # the common case: all sent, nothing to queue
            data = data[n:]
        c.out += data
        return 0

    def _on_input(self, c: _Conn, chunk: bytes) -> bool:
        """chunk came (b"": the peer's EOF): echo what the framing releases.
        True if the connection was closed or is ending (no more input for it)."""
        if not chunk:
            # Half-close: a partial line is still echoed, nothing is lost,
            # and it is forgotten.
            held, c.held = c.held, b""
            rc = self._echo_out(c, held)
            if rc < 0:
                self._conn_close(c, RESET)
            else:
                self._finish(c, LIMIT if rc else PEER)
            return True
        self._counts["bytes_in"] += len(chunk)
        if self._idle_ms:
            self._touch(c)
        buf = c.held + chunk if c.held else chunk
        emit, c.cont, quit_ = self._scan(c.cont, buf)
        rc = self._echo_out(c, buf if emit == len(buf) else buf[:emit])
        if rc < 0:
            self._conn_close(c, RESET)
            return True
        if rc or quit_:
            self._finish(c, LIMIT if rc else QUIT)
            return True
        if self._line:
            c.held = buf[emit:] if emit < len(buf) else b""
        if c.events != READ or c.out or c.fx is not None:
            self._update_interest(c)
        return False

    def _on_readable(self, c: _Conn) -> None:
        try:
            chunk = c.sock.recv(self._want)
        except _RETRY:
            return
        except OSError:
            self._conn_close(c, RESET)
            return
        self._on_input(c, chunk)

    # ---- TLS (_pytls.py): between the socket's bytes and the echo ----

    def _handshake_faults(self, c: _Conn) -> bool:
        """The handshake faults, decided when the first bytes of the handshake
        (the ClientHello) come: True if the connection was reset, stalls or
        waits."""
        f = self._faults
        if f is None:
            return False
        fx = c.fx if c.fx is not None else self._fx_attach(c)
        assert c.tls is not None
        if chance(fx.rng, f.handshake_reset_ppm):
            self._conn_reset(c, HANDSHAKE)
            return True
        if f.handshake_stall:
            c.tls.stalled = True
            return True
        if f.handshake_delay_ms > 0:
            fx.waiting = HANDSHAKE_WAIT
            self._loop.timer_start(fx.wait, self._loop.now + f.handshake_delay_ms)
            self._update_interest(c)
            return True
        return False

    def _tls_progress(self, c: _Conn) -> bool:
        """Move the handshake on, then decrypt and echo what came. True if
        the connection was closed or ended."""
        t = c.tls
        assert t is not None
        if not t.ready:
            try:
                done = t.handshake()
            except ssl.SSLError:
                c.out += t.take()
                self._flush_out(c)  # its alert, if it can go at once
                self._conn_close(c, HANDSHAKE)
                return True
            c.out += t.take()
            if not self._flush_out(c):
                self._conn_close(c, RESET)
                return True
            if not done:
                return self._conn_settle(c)
            self._touch(c)
        while True:
            try:
                chunk = t.read(self._want)
            except ssl.SSLError:
                # A bad record: the alert goes after the echo of the records
                # before it, if it can at once.
                c.out += t.take()
                self._flush_out(c)
                self._conn_close(c, RESET)
                return True
            if chunk is None:
                break
            if self._on_input(c, chunk):
                return True
        # Tickets, key updates: whatever reading made OpenSSL write.
        c.out += t.take()
        if not self._flush_out(c):
            self._conn_close(c, RESET)
            return True
        return self._conn_settle(c)

    def _on_tls_readable(self, c: _Conn) -> None:
        t = c.tls
        assert t is not None
        try:
            raw = c.sock.recv(READ_CHUNK)
        except _RETRY:
            return
        except OSError:
            self._conn_close(c, RESET)
            return
        if not raw:
            if t.ready:
                self._on_input(c, b"")
            else:
                self._conn_close(c, HANDSHAKE)  # given up before its end
            return
        if t.stalled:
            return  # handshake_stall: dropped
        t.feed(raw)
        if not t.started:
            t.started = True
            if self._handshake_faults(c):
                return
        self._tls_progress(c)

    def _on_writable(self, c: _Conn) -> bool:
        """Returns True if the connection was closed."""
        before = len(c.out)
        if not self._flush_out(c):
            self._conn_close(c, RESET)
            return True
        if len(c.out) < before:
            self._touch(c)
        return self._conn_settle(c)

    def _on_conn_io(self, c: _Conn, ready: int) -> None:
        # Errors and hang-ups surface through recv() or send().
        if ready & WRITE and self._on_writable(c):
            return
        if ready & READ and c.events & READ:
            if c.lingering:
                self._on_lingering_readable(c)
            elif c.tls is not None:
                self._on_tls_readable(c)
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

    def _add_conn(self, sock: socket.socket, peer: tuple[Any, ...]) -> None:
        sock.setblocking(False)
        # Echoes go out as they are made: do not hold them back to coalesce.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._next_id += 1
        c = _Conn(sock, self._next_id, peer, self._loop.now)
        if self._tls is not None:
            c.tls = TlsConn(self._tls)
        self._active[c.id] = c
        self._counts["accepted"] += 1
        self._counts["open"] += 1
        self._loop.io_start(sock, READ, partial(self._on_conn_io, c))
        if self._idle_ms and not self._idle_timer.pending:
            self._loop.timer_start(self._idle_timer, c.last_active_ms + self._idle_ms)
        self._notify(c, "open", None)
        f = self._faults
        if f is None:
            return
        # Faults: its generator's first draw decides `refuse`.
        fx = self._fx_attach(c)
        if chance(fx.rng, f.refuse_ppm):
            self._conn_reset(c, REFUSED)
            return
        if f.accept_delay_ms > 0:
            fx.waiting = ACCEPT_WAIT
            self._loop.timer_start(fx.wait, c.opened_ms + f.accept_delay_ms)
        self._fx_update(c)

    def _make_room(self) -> bool:
        """At max_clients: close the oldest lingering connection (its echo is
        out and its peer asked to quit), input drained first so the close
        does not reset it; False if there is none."""
        if not self._lingering:
            return False
        oldest = next(iter(self._lingering.values()))
        self._drop_input(oldest, MAKE_ROOM_READS)
        self._conn_close(oldest, _reason(oldest))
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
            # Their echo is out and they were ending (quit, limit): that is how they end.
            self._conn_close(oldest, _reason(oldest))

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
        if self._udp is not None:
            self._arm_udp_release()
        if self._cut_short:
            for c in [*self._active.values(), *self._lingering.values()]:
                if c.fx is not None and c.sock.fileno() >= 0:  # not closed meanwhile
                    self._arm_fx_timers(c)

    def _arm_fx_timers(self, c: _Conn) -> None:
        """The same for a connection's fault timers, after a run() that an
        exception ended: it may have cut a timer's callback short after the
        timer fired (so it is no longer pending) and before its work was
        done. Re-arm what the connection's state still waits for (an accept
        or close delay, reset_after), then let it make the progress due now
        (held echo released and its timer re-armed, the send gate's work)."""
        fx, f, loop = c.fx, self._faults, self._loop
        assert fx is not None
        if fx.waiting and not fx.wait.pending:
            loop.timer_start(fx.wait, loop.now)
        if f is not None and f.reset_after_ms >= 0 and not fx.reset.pending:
            loop.timer_start(fx.reset, max(c.opened_ms + f.reset_after_ms, loop.now))
        self._fx_progress(c)

    def _close_all(self, reason: str) -> None:
        while self._active:
            self._conn_close(next(iter(self._active.values())), reason)
        # Their echo is out and they were ending: that is how they end.
        while self._lingering:
            c = next(iter(self._lingering.values()))
            self._conn_close(c, _reason(c))

    # ---- UDP ----

    def _on_udp_release(self) -> None:
        assert self._udp is not None
        due = self._udp.release(self._listener, self._loop.now)
        if due is not None:
            self._loop.timer_start(self._udp_release, due)

    def _arm_udp_release(self) -> None:
        """Keep the release timer at the first held datagram's time."""
        assert self._udp is not None
        due = self._udp.due()
        if due is None:
            self._loop.timer_stop(self._udp_release)
        elif self._udp_release.when != due:
            self._loop.timer_start(self._udp_release, due)

    def _on_datagrams(self, _ready: int) -> None:
        assert self._udp is not None
        self._udp.readable(self._listener, self._loop.now)
        self._arm_udp_release()

    def _on_drop(self, reason: int, src: tuple[Any, ...], n: int) -> None:
        if self._on_event is not None:
            self._on_event(Event("drop", 0, peer_of(src), DROP_REASONS[reason], n))

    # ---- faults, changed from any thread ----

    def _take_faults(self) -> None:
        """Take the faults set_faults() left, if any, and apply them to every
        open connection (on the loop's thread, at the start of a turn)."""
        with self._faults_lock:
            pending, self._pending_faults = self._pending_faults, None
        if pending is None:
            return
        f = pending[0]
        if f is not None and faults_off(f):
            f = None
        self._faults = f
        if self._udp is not None:
            self._udp.set_faults(f, self._listener, self._loop.now)
            self._arm_udp_release()
        for c in [*self._active.values(), *self._lingering.values()]:
            if c.sock.fileno() >= 0:  # not closed meanwhile
                self._fx_update(c)

    # ---- the loop ----

    def run(self, timeout: float | None) -> int:
        """Serve for at most timeout seconds (None: until stopped): 1 if the
        time ran out while serving, 0 once stop() was called (every client
        connection is then closed)."""
        loop = self._loop
        loop.update_now()
        self._arm_timers()
        self._cut_short = True  # until this run returns
        rc = self._run(timeout)
        self._cut_short = False
        return rc

    def _run(self, timeout: float | None) -> int:
        loop = self._loop
        deadline = None if timeout is None else loop.now + round(timeout * 1000)
        # Ctrl+C's handler runs when this returns, never inside a callback:
        # it wakes the loop, which returns at once (_signals.py).
        with SignalsDeferred(loop.wake) as signals:
            while True:
                # Once per turn; the wake-up that came with it is drained by the
                # loop whenever it is readable, even after this session ended.
                if self._stop:
                    self._close_all(SHUTDOWN)
                    if self._udp is not None:
                        self._udp.discard(loop.now)
                        self._arm_udp_release()
                    # Only now: a stop asked for by a close event belongs to this stop.
                    self._stop = False
                    return 0
                if self._pending_faults is not None:
                    self._take_faults()
                loop.run_once(-1 if deadline is None else max(0, deadline - loop.now))
                if signals.caught or (deadline is not None and loop.now >= deadline):
                    return 1

    # ---- life cycle ----

    def address(self) -> tuple[str, int]:
        addr = self._listener.getsockname()
        return numeric_host(addr), addr[1]

    def stop(self) -> None:
        self._stop = True
        self._loop.wake()

    def stats(self) -> Stats:
        return Stats(
            closed=dict(self._closed),
            dropped=dict(zip(DROP_REASONS, self._dropped, strict=True)),
            **self._counts,
        )

    def set_faults(self, faults: FaultsInts | None) -> None:
        if faults is not None:
            faults_check(faults, self.cfg.transport)
        with self._faults_lock:
            self._pending_faults = (faults,)  # a newer one wins
        if not self._freed:
            self._loop.wake()

    def set_tls(self, files: TlsFiles) -> None:
        """Serve TLS on every connection accepted from now on."""
        if self.cfg.transport != "tcp":
            raise ValueError("TLS is for TCP servers")
        self._tls = server_context(files)

    def free(self) -> None:
        if self._freed:
            return
        self._freed = True
        try:
            self._close_all(SHUTDOWN)
        finally:
            self._listener.close()
            self._loop.close()
