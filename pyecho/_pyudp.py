"""RFC 862 over UDP, the server's datagram path: the twin of csrc/udp.c.

_pyserver.py owns the socket and the loop; this file decides, datagram by
datagram, what is echoed (the loop guard, the rate limits, the faults) and
echoes it. The same guard, the same integer token buckets, the same source
table and hash as the C core, so both engines drop the same datagrams.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from ._config import DROP_REASONS, Config
from ._faults import FaultsInts
from ._pycompat import MSG_DONTWAIT, MSG_NOSIGNAL
from ._pyfaults import CHUNK_COST, FxQueue, Rng, chance, delay

BATCH = 32  # datagrams per batch (the C core's recvmmsg()/sendmmsg())
BATCHES = 8  # batches per readiness event, for fairness
DGRAM_MAX = 65536  # more than any UDP payload (65,527 bytes)
SOURCES = 4096  # per-source buckets: a fixed table
MILLI = 1000  # bucket tokens are thousandths of a datagram
REPORT_EVERY_MS = 1000
KNOWN_MAX = 4096  # sources whose guard verdict and slot are remembered

GUARD, RATE_SOURCE, RATE_GLOBAL, FULL, ERROR, FAULT = range(len(DROP_REASONS))

# Ports of services that answer whatever they receive, or amplify it: an
# echo to one of them could start an endless loop (CVE-1999-0103) or reflect
# a spoofed flood. The BSD inetds refuse these too.
GUARDED_PORTS = frozenset(
    (7, 9, 13, 17, 19, 37, 53, 111, 123, 137, 161, 389, 520, 1900, 3702, 5353, 5683, 11211)
)

_V4_MAPPED = bytes(10) + b"\xff\xff"
_FULL = (BlockingIOError, InterruptedError)

# Told about drops: (reason index, the latest one's source, how many).
DropFn = Callable[[int, Any, int], None]

# ---- the guard ----


def _v4_unanswerable(a: bytes) -> bool:
    """Multicast 224/4, limited broadcast, "this host" 0/8."""
    return a[0] & 0xF0 == 224 or a == b"\xff\xff\xff\xff" or a[0] == 0


def address_key(src: Any) -> bytes:
    """The source's key: its address as IPv6 (IPv4 mapped), then its port in
    network byte order; a %scope is not part of it."""
    host, port = src[0], src[1]
    if ":" in host:
        raw = socket.inet_pton(socket.AF_INET6, host.partition("%")[0])
    else:
        raw = _V4_MAPPED + socket.inet_pton(socket.AF_INET, host)
    return raw + port.to_bytes(2, "big")


def guarded(key: bytes) -> bool:
    """Would a datagram from this source (its key) be refused by the guard?"""
    a, port = key[:16], int.from_bytes(key[16:], "big")
    if a.startswith(_V4_MAPPED):
        if _v4_unanswerable(a[12:]):
            return True
    elif a[0] == 0xFF or a == bytes(16):
        return True
    return port == 0 or port in GUARDED_PORTS


# ---- rate limits: integer token buckets ----


def fnv1a(key: bytes) -> int:
    """FNV-1a, 64 bits: cheap, and the C core computes the same slot."""
    h = 14695981039346656037
    for b in key:
        h = ((h ^ b) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h


class Bucket:
    """``rate`` datagrams per second, a burst of one second's."""

    __slots__ = ("tokens", "last_ms")

    def __init__(self, tokens: int = 0, last_ms: int = 0) -> None:
        self.tokens = tokens  # thousandths of a datagram
        self.last_ms = last_ms


def take(b: Bucket, rate: int, now_ms: int) -> bool:
    cap = rate * MILLI
    elapsed = now_ms - b.last_ms
    # A second refills it whole.
    b.tokens = cap if elapsed >= 1000 else min(cap, b.tokens + elapsed * rate)
    b.last_ms = now_ms
    if b.tokens < MILLI:
        return False
    b.tokens -= MILLI
    return True


class UdpEcho:
    """What is echoed and what is dropped, for one server socket."""

    def __init__(self, cfg: Config, counts: dict[str, int], dropped: list[int], on_drop: DropFn):
        self.cfg = cfg
        self.counts = counts
        self.dropped = dropped  # by reason index
        self.on_drop = on_drop
        self.global_bucket = Bucket()  # last_ms 0: the first take finds it full
        # Slot -> (key, bucket); None without a per-source limit.
        self.sources: list[tuple[bytes, Bucket] | None] | None = (
            [None] * SOURCES if cfg.udp_rate_per_source else None
        )
        self.next_report_ms = [0] * len(DROP_REASONS)
        self.unreported = [0] * len(DROP_REASONS)
        self.faults: FaultsInts | None = None
        self.rng = Rng(0, 0)
        self.delayed = FxQueue()  # echoes held by latency, each with its address
        self.bufs = [bytearray(DGRAM_MAX) for _ in range(BATCH)]
        self.views = [memoryview(b) for b in self.bufs]
        # Recent sources: address -> (key, guarded, slot), bounded.
        self._known: dict[Any, tuple[bytes, bool, int]] = {}

    def _source(self, src: Any) -> tuple[bytes, bool, int]:
        known = self._known.get(src)
        if known is None:
            if len(self._known) >= KNOWN_MAX:
                self._known.clear()
            key = address_key(src)
            known = self._known[src] = (key, guarded(key), fnv1a(key) % SOURCES)
        return known

    def _source_bucket(self, key: bytes, slot: int, now_ms: int) -> Bucket:
        """One bucket per table slot: a new source takes its slot over with a
        full bucket, so the table stays bounded whatever the number of
        sources (the global limit bounds the rest)."""
        s = self.sources[slot]  # type: ignore[index]
        if s is None or s[0] != key:
            s = (key, Bucket(self.cfg.udp_rate_per_source * MILLI, now_ms))
            self.sources[slot] = s  # type: ignore[index]
        return s[1]

    # ---- dropping ----

    def drop(self, reason: int, src: Any, n: int, now_ms: int) -> None:
        self.dropped[reason] += n
        self.unreported[reason] += n
        if now_ms >= self.next_report_ms[reason]:
            self.on_drop(reason, src, self.unreported[reason])
            self.unreported[reason] = 0
            self.next_report_ms[reason] = now_ms + REPORT_EVERY_MS

    def admit(self, src: Any, now_ms: int) -> bool:
        """Should this datagram be echoed? Guard first, then the source's
        limit, then the global one (a datagram over its source's limit
        spends no global token)."""
        cfg = self.cfg
        key, is_guarded, slot = self._source(src)
        if cfg.udp_guard and is_guarded:
            self.drop(GUARD, src, 1, now_ms)
            return False
        if self.sources is not None and not take(
            self._source_bucket(key, slot, now_ms), cfg.udp_rate_per_source, now_ms
        ):
            self.drop(RATE_SOURCE, src, 1, now_ms)
            return False
        if cfg.udp_rate and not take(self.global_bucket, cfg.udp_rate, now_ms):
            self.drop(RATE_GLOBAL, src, 1, now_ms)
            return False
        return True

    # ---- echoing ----

    def send_batch(self, sock: socket.socket, out: list, now_ms: int) -> None:
        """Send the queued echoes. A full send buffer drops the rest (a
        datagram service must not block or queue without bound); a datagram
        that cannot be sent (too big for the route, no route) is dropped
        alone."""
        counts = self.counts
        for i, (data, to) in enumerate(out):
            # Counted first: a Ctrl+C landing right after the send (the echo
            # gone) must not leave it uncounted; a failed send takes it back.
            counts["bytes_out"] += len(data)
            counts["datagrams_out"] += 1
            try:
                sock.sendto(data, MSG_DONTWAIT | MSG_NOSIGNAL, to)
                continue
            except OSError as e:
                full = isinstance(e, _FULL) or e.errno == errno.ENOBUFS
            counts["bytes_out"] -= len(data)
            counts["datagrams_out"] -= 1
            if full:
                self.drop(FULL, to, len(out) - i, now_ms)
                return
            self.drop(ERROR, to, 1, now_ms)

    def fault(self, data: Any, src: Any, now_ms: int) -> int:
        """Faults on an admitted datagram: drop it, or hold its echo (one or
        two, duplicated) for latency. How many echoes go out now (0, 1, 2).
        Draws come in this order: drop, duplicate, delay."""
        f = self.faults
        if f is None:
            return 1
        if chance(self.rng, f.drop_ppm):
            self.drop(FAULT, src, 1, now_ms)
            return 0
        copies = 1 + chance(self.rng, f.duplicate_ppm)
        if f.latency_ms == 0 and f.jitter_ms == 0:
            return copies
        due = now_ms + delay(self.rng, f)
        for _ in range(copies):
            # Held echo is bounded like a TCP connection's queue.
            if self.delayed.cost + len(data) + CHUNK_COST > self.cfg.max_pending:
                self.drop(FULL, src, 1, now_ms)
            else:
                self.delayed.push(due, data, src)
        return 0

    def readable(self, sock: socket.socket, now_ms: int) -> None:
        """Echo what is waiting on sock, a few batches at most."""
        counts, views = self.counts, self.views
        for _ in range(BATCHES):
            out: list = []
            n = 0
            for view in views:
                try:
                    size, src = sock.recvfrom_into(view, DGRAM_MAX, MSG_DONTWAIT)
                except OSError:
                    break  # EAGAIN: all done; errors of earlier sends: nothing to do
                n += 1
                counts["datagrams_in"] += 1
                counts["bytes_in"] += size
                if not self.admit(src, now_ms):
                    continue
                data = view[:size]
                for _ in range(self.fault(data, src, now_ms)):
                    out.append((data, src))
            if n == 0:
                return
            self.send_batch(sock, out, now_ms)
            if n < BATCH:
                return

    def due(self) -> int | None:
        """When the first datagram held by latency is due; None: none."""
        return self.delayed.head.due_ms if self.delayed else None

    def release(self, sock: socket.socket, now_ms: int) -> int | None:
        """Send the held datagrams that are due; returns due()."""
        delayed = self.delayed
        while delayed and delayed.head.due_ms <= now_ms:
            out = []
            while len(out) < BATCH and delayed and delayed.head.due_ms <= now_ms:
                c = delayed.pop()
                out.append((c.data, c.to))
            self.send_batch(sock, out, now_ms)
        return self.due()

    def set_faults(self, f: FaultsInts | None, sock: socket.socket, now_ms: int) -> None:
        """Faults from now on (None: none): reseeds the generator, sends what
        is now due."""
        self.faults = f
        self.rng = Rng(f.seed if f is not None else 0, 0)
        self.delayed.hurry(now_ms if f is None else now_ms + f.latency_ms + f.jitter_ms)
        self.release(sock, now_ms)
