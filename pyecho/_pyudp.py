"""RFC 862 over UDP, the server's datagram path: the twin of csrc/udp.c.

_pyserver.py owns the socket and the loop; this file decides, datagram by
datagram, what is echoed (the guard, the loop checks, the rate limits, the
faults) and echoes it. The same guard, the same loop detection, the same
integer token buckets and the same source table as the C core, so both
engines drop the same kinds of datagrams (each with its own random key for
the table, so not in the same slots).
"""

from __future__ import annotations

import errno
import hashlib
import os
import socket
import struct
import sys
from collections.abc import Callable
from typing import Any

from ._config import DROP_REASONS, Config
from ._faults import FaultsInts
from ._pycompat import MSG_DONTWAIT, MSG_NOSIGNAL
from ._pyfaults import CHUNK_COST, FxQueue, Rng, chance, delay

BATCH = 32  # datagrams per batch (the C core's recvmmsg()/sendmmsg())
BATCHES = 8  # batches per readiness event, for fairness
DGRAM_MAX = 65536  # more than any UDP payload (65,527 bytes)
SOURCES = 4096  # per-source state: a fixed table
MILLI = 1000  # bucket tokens are thousandths of a datagram
REPORT_EVERY_MS = 1000
QUIET_MS = 1000  # a source silent this long gives its slot up
LOOP_GAP_MS = 500  # returns further apart than this are no loop
# The loop detector (docs/SECURITY.md, "Loops"): per source, up to LOOP_K
# fingerprints of echoes sent to it, those whose top `level` bits are zero
# ("sampled").
LOOP_K = 8
LOOP_LEVEL_MAX = 48  # sampling stops halving here
LOOP_SPAN = 32  # sampled: a run of LOOP_SPAN << level at least
LOOP_HITS = 16  # sampled returns in a run before it is a loop
LOOP_DRY = 32  # 4 x LOOP_K: no return for LOOP_DRY << level: restart
MASK64 = (1 << 64) - 1
KNOWN_MAX = 4096  # sources whose guard verdict and slot are remembered

GUARD, RATE_SOURCE, RATE_GLOBAL, FULL, ERROR, FAULT, LOOP, SHUTDOWN = range(len(DROP_REASONS))

# Source ports never answered: every port below 512, as OpenBSD's inetd
# refuses them (echo 7, discard 9, systat 11, daytime 13, qotd 17, chargen
# 19, time 37, DNS 53, TFTP 69, portmap 111, NTP 123, NetBIOS 137 and 138,
# SNMP 161, CLDAP 389, QUIC 443 among them: CVE-1999-0103, CVE-2024-2169),
# and the ones named here above it. An echo to one of them could start an
# endless loop or reflect a spoofed flood.
GUARDED_BELOW = 512
GUARDED_PORTS = frozenset((520, 1900, 2049, 3702, 5353, 5683, 11211))

# Each datagram's destination (docs/PROTOCOL.md, "UDP"). Python has no
# socket.IP_PKTINFO before 3.13; Linux's value is part of its ABI. Where
# neither is known, a wildcard server answers from the address the system
# picks, and a datagram to a subnet broadcast address is not recognised.
IP_PKTINFO: int | None = getattr(
    socket, "IP_PKTINFO", 8 if sys.platform.startswith("linux") else None
)
IPV6_PKTINFO: int | None = getattr(socket, "IPV6_PKTINFO", None)
IPV6_RECVPKTINFO: int | None = getattr(socket, "IPV6_RECVPKTINFO", None)
_IN_PKTINFO = struct.Struct("=i4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr
_IN6_PKTINFO = struct.Struct("=16sI")  # ipi6_addr, ipi6_ifindex
# Windows' CPython has no recvmsg()/sendmsg() (nor CMSG_SPACE): no
# destination there, as where the system does not say.
HAS_CMSG = hasattr(socket, "CMSG_SPACE")
ANC_SPACE = (
    socket.CMSG_SPACE(_IN_PKTINFO.size) + socket.CMSG_SPACE(_IN6_PKTINFO.size) if HAS_CMSG else 0
)

_V4_MAPPED = bytes(10) + b"\xff\xff"
_FULL = (BlockingIOError, InterruptedError)

# Told about drops: (reason index, the latest one's source, how many).
DropFn = Callable[[int, Any, int], None]


class Dst:
    """Where a datagram was sent: ``addr`` 4 bytes (IPv4, on an IPv6 socket
    too) or 16; ``group``: the system says it went to a broadcast or
    multicast address (Linux: the local address that would answer it,
    ipi_spec_dst, differs from the one in its header)."""

    __slots__ = ("addr", "ifindex", "group")

    def __init__(self, addr: bytes, ifindex: int, group: bool) -> None:
        self.addr = addr
        self.ifindex = ifindex
        self.group = group


def read_dst(ancdata: list[tuple[int, int, bytes]]) -> Dst | None:
    """The destination in recvmsg()'s ancillary data; None if not there."""
    v6 = None
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= _IN_PKTINFO.size:
            ifindex, spec, addr = _IN_PKTINFO.unpack_from(data)
            return Dst(addr, ifindex, addr != spec)
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 20:
            addr, ifindex = _IN6_PKTINFO.unpack_from(data)
            v6 = Dst(addr[12:] if addr.startswith(_V4_MAPPED) else addr, ifindex, False)
    return v6


def write_dst(dst: Dst, family: int) -> list[tuple[int, int, bytes]]:
    """The ancillary data making an answer on a socket of this family leave
    from dst's address."""
    if family == socket.AF_INET6 and IPV6_PKTINFO is not None:
        if len(dst.addr) == 4:
            return [
                (socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(_V4_MAPPED + dst.addr, 0))
            ]
        # A link-local address is only that on its interface.
        ifindex = dst.ifindex if dst.addr[0] == 0xFE and dst.addr[1] & 0xC0 == 0x80 else 0
        return [(socket.IPPROTO_IPV6, IPV6_PKTINFO, _IN6_PKTINFO.pack(dst.addr, ifindex))]
    if family == socket.AF_INET and IP_PKTINFO is not None and len(dst.addr) == 4:
        return [(socket.IPPROTO_IP, IP_PKTINFO, _IN_PKTINFO.pack(0, dst.addr, bytes(4)))]
    return []


def want_dst(sock: socket.socket) -> bool:
    """Ask the system for each datagram's destination (an IPv6 socket also
    for its IPv4 datagrams); whether it will tell."""
    family = sock.family
    ok = False
    if not HAS_CMSG:
        return False
    if IP_PKTINFO is not None:
        try:
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            ok = family == socket.AF_INET
        except OSError:
            pass
    if family == socket.AF_INET6 and IPV6_RECVPKTINFO is not None:
        try:
            sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
            ok = True
        except OSError:
            pass
    return ok


def is_broadcast(addr: bytes) -> bool:
    """Is this IPv4 address a broadcast address here? Connecting a UDP
    socket to one without SO_BROADCAST fails with EACCES."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect((socket.inet_ntop(socket.AF_INET, addr), 9))
        except PermissionError:
            return True
        except OSError:
            pass
    return False


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
    return bytes(raw + port.to_bytes(2, "big"))


def guarded(key: bytes) -> bool:
    """Would a datagram from this source (its key) be refused by the guard?"""
    a, port = key[:16], int.from_bytes(key[16:], "big")
    if a.startswith(_V4_MAPPED):
        if _v4_unanswerable(a[12:]):
            return True
    elif a[0] == 0xFF or a == bytes(16):
        return True
    return port < GUARDED_BELOW or port in GUARDED_PORTS


def to_group(dst: Dst | None) -> bool:
    """Was this datagram sent to a broadcast or multicast address?"""
    if dst is None:
        return False
    if dst.group:
        return True
    if len(dst.addr) == 4:
        return _v4_unanswerable(dst.addr)
    return dst.addr[0] == 0xFF  # IPv6 multicast, ff00::/8


# ---- rate limits: integer token buckets ----


class Bucket:
    """``rate`` datagrams per second, a burst of one second's."""

    __slots__ = ("tokens", "last_ms")

    def __init__(self, tokens: int = 0, last_ms: int = 0) -> None:
        self.tokens = tokens  # thousandths of a datagram
        self.last_ms = last_ms


def refill(b: Bucket, rate: int, now_ms: int) -> None:
    cap = rate * MILLI
    elapsed = now_ms - b.last_ms
    # A second refills it whole.
    b.tokens = cap if elapsed >= 1000 else min(cap, b.tokens + elapsed * rate)
    b.last_ms = now_ms


def take(b: Bucket, rate: int, now_ms: int) -> bool:
    refill(b, rate, now_ms)
    if b.tokens < MILLI:
        return False
    b.tokens -= MILLI
    return True


class Source:
    """What the server knows of one source (address and port)."""

    __slots__ = (
        "key",
        "level",
        "fps",
        "tripped",
        "hits",
        "run",
        "dry",
        "seen_ms",
        "bucket",
        "contended_ms",
    )

    def __init__(self, key: bytes, now_ms: int, bucket: Bucket) -> None:
        self.key = key
        self.level = 0  # fingerprints kept: those with `level` top bits zero
        self.fps: list[int] = []  # sampled fingerprints of echoes sent to it
        self.tripped = False  # taken for a loop: dropped until the run ends
        self.hits = 0  # sampled returns in the run
        self.run = 0  # datagrams since the last sampled one that was new
        self.dry = 0  # datagrams since the last sampled return
        self.seen_ms = now_ms  # its last datagram
        self.bucket = bucket
        self.contended_ms = 0  # the slot's: when a source last found it held

    def loop_reset(self) -> None:
        """The loop detector starts again, as for a new source."""
        self.level = 0
        self.fps.clear()
        self.tripped = False
        self.hits = self.run = self.dry = 0

    def reset(self, key: bytes, now_ms: int) -> None:
        self.key = key
        self.loop_reset()
        self.seen_ms = now_ms

    def loop_seen(self, fp: int, limit: int, now_ms: int) -> bool:
        """A datagram from this source with fingerprint fp: is it part of a
        loop? A sampled fingerprint kept in the table is a return (the
        datagram was echoed here before); a sampled one not kept is new, and
        ends the run; one not sampled tells nothing, and the run goes on. A
        loop is a run of udp_loop_limit datagrams (and of LOOP_SPAN << level
        when sampling, so that new payloads cannot all have escaped the
        sample) with LOOP_HITS sampled returns in it. docs/SECURITY.md has
        the argument."""
        if now_ms - self.seen_ms >= LOOP_GAP_MS:
            self.loop_reset()
        level = self.level
        if fp >> (64 - level):  # not sampled
            self.run += 1
            self.dry += 1
        elif fp in self.fps:
            self.run += 1
            self.hits += 1
            self.dry = 0
        else:
            if self.tripped:
                self.loop_reset()  # the loop is over: start again
                level = 0
            self.run = self.hits = 0
            self.dry += 1
        if self.dry >= LOOP_DRY << level:
            self.loop_reset()  # a level too high to see what comes back
            return False
        if self.run < limit:
            return False  # not tripped either: its run was longer
        need = max(limit, LOOP_SPAN << level) if level else limit
        if self.run >= need and self.hits >= min(limit, LOOP_HITS):
            self.tripped = True
        return self.tripped

    def loop_echoed(self, fp: int) -> None:
        """An echo with fingerprint fp goes to this source: kept if sampled;
        a full table halves the sample (level + 1) until there is room or fp
        is not sampled."""
        fps = self.fps
        if fp >> (64 - self.level) or fp in fps:
            return
        while len(fps) == LOOP_K:
            if self.level == LOOP_LEVEL_MAX:
                return
            self.level += 1
            shift = 64 - self.level
            fps[:] = [f for f in fps if not f >> shift]
            if fp >> shift:
                return
        fps.append(fp)


# An echo to send: (data, to, its destination, the second copy of a duplicate).
Echo = tuple[Any, Any, Dst | None, bool]


class UdpEcho:
    """What is echoed and what is dropped, for one server socket."""

    def __init__(self, cfg: Config, counts: dict[str, int], dropped: list[int], on_drop: DropFn):
        self.cfg = cfg
        self.counts = counts
        self.dropped = dropped  # by reason index
        self.on_drop = on_drop
        self.global_bucket = Bucket()  # last_ms 0: the first take finds it full
        # Per-source state by slot; None without per-source limits.
        self.sources: list[Source | None] | None = (
            [None] * SOURCES if cfg.udp_rate_per_source or cfg.udp_loop_limit else None
        )
        self.overflow = Source(b"", 0, Bucket())  # the sources that find their slot held
        self._key = os.urandom(16)  # random, per server: where a source's slot is
        # A datagram's fingerprint, to tell whether a source sends back what
        # it was sent: Python's hash of the whole payload (keyed per
        # process), times this random odd key, modulo 2^64 (a bijection: no
        # more collisions than the hash's). Its top bits, which the loop
        # detector samples, hang on all of the hash's bits and on the key
        # (multiply-shift hashing): which payloads are sampled cannot be
        # predicted, even by one who knows PYTHONHASHSEED.
        self._fp_mul = int.from_bytes(os.urandom(8), "little") | 1
        self.family = socket.AF_INET
        self.port = -1  # the socket's own port
        self.wildcard = False  # bound to 0.0.0.0 or ::: answers name their source
        self.pktinfo = False  # the system tells each datagram's destination
        self.fixed: Dst | None = None  # not wildcard: every datagram's destination
        self.next_report_ms = [0] * len(DROP_REASONS)
        self.unreported = [0] * len(DROP_REASONS)
        self.faults: FaultsInts | None = None
        self.rng = Rng(0, 0)
        self.delayed = FxQueue()  # echoes held by latency, each with its addresses
        self.bufs = [bytearray(DGRAM_MAX) for _ in range(BATCH)]
        self.views = [memoryview(b) for b in self.bufs]
        # Recent sources: address -> (key, guarded, slot), bounded.
        self._known: dict[Any, tuple[bytes, bool, int]] = {}

    def bind(self, sock: socket.socket) -> None:
        """After the socket is bound: its own port and address, and ask the
        system for each datagram's destination."""
        addr = sock.getsockname()
        self.family = sock.family
        self.port = addr[1]
        self.wildcard = addr[0] in ("0.0.0.0", "::")
        if self.wildcard:
            self.pktinfo = want_dst(sock)
            return
        # One address: every datagram was sent to it. A broadcast address of
        # an interface can be bound too: the system refuses to connect to
        # one without SO_BROADCAST.
        raw = socket.inet_pton(sock.family, addr[0].partition("%")[0])
        if raw.startswith(_V4_MAPPED):
            raw = raw[12:]
        self.fixed = Dst(raw, 0, len(raw) == 4 and is_broadcast(raw))

    def _source(self, src: Any) -> tuple[bytes, bool, int]:
        known = self._known.get(src)
        if known is None:
            if len(self._known) >= KNOWN_MAX:
                self._known.clear()
            key = address_key(src)
            h = hashlib.blake2b(key, digest_size=8, key=self._key).digest()
            known = self._known[src] = (key, guarded(key), int.from_bytes(h, "little") % SOURCES)
        return known

    def _source_of(self, key: bytes, slot: int, now_ms: int) -> Source:
        """The source's state. A slot held by another source is taken over
        only once that one has been quiet for QUIET_MS (its bucket is full
        again then: it loses nothing); until then the newcomer shares the
        overflow entry, whose bucket has the same rate. A source taking over
        a slot that someone found held in the last QUIET_MS (it may have
        been using the overflow bucket meanwhile) starts with no more tokens
        than the overflow bucket holds, so moving from one to the other never
        adds to its limit; any other newcomer starts with a full bucket, as a
        source silent for QUIET_MS would have."""
        sources = self.sources
        s = sources[slot]  # type: ignore[index]
        if s is not None and s.key == key:
            return s
        if s is None or now_ms - s.seen_ms >= QUIET_MS:
            rate = self.cfg.udp_rate_per_source
            tokens = rate * MILLI
            if rate and s is not None and now_ms - s.contended_ms < QUIET_MS:
                refill(self.overflow.bucket, rate, now_ms)
                tokens = self.overflow.bucket.tokens
            if s is None:
                s = sources[slot] = Source(key, now_ms, Bucket(tokens, now_ms))  # type: ignore[index]
            else:
                s.reset(key, now_ms)
                s.bucket.tokens, s.bucket.last_ms = tokens, now_ms
            return s
        s.contended_ms = now_ms
        s = self.overflow
        if s.key != key:
            s.reset(key, now_ms)  # its bucket is shared: kept
        return s

    # ---- dropping ----

    def drop(self, reason: int, src: Any, n: int, now_ms: int) -> None:
        if not n:
            return
        self.dropped[reason] += n
        self.unreported[reason] += n
        if now_ms >= self.next_report_ms[reason]:
            self.on_drop(reason, src, self.unreported[reason])
            self.unreported[reason] = 0
            self.next_report_ms[reason] = now_ms + REPORT_EVERY_MS

    def charge(self, s: Source | None, src: Any, now_ms: int, report: bool) -> bool:
        """One more echo to this source (s: None without a table): a token
        from its bucket, then one from the global bucket (none spent there
        if its own is empty)."""
        cfg = self.cfg
        if s is not None and cfg.udp_rate_per_source:
            if not take(s.bucket, cfg.udp_rate_per_source, now_ms):
                if report:
                    self.drop(RATE_SOURCE, src, 1, now_ms)
                return False
        if cfg.udp_rate and not take(self.global_bucket, cfg.udp_rate, now_ms):
            if report:
                self.drop(RATE_GLOBAL, src, 1, now_ms)
            return False
        return True

    def admit(
        self, src: Any, dst: Dst | None, data: Any, now_ms: int
    ) -> tuple[bool, Source | None]:
        """Should this datagram be echoed? The guard first (its source, then
        its destination), then the loop checks (a datagram from the server's
        own port; a source sending back what it was sent: Source.loop_seen),
        then the source's limit, then the global one. Also the source's
        state, for the faults."""
        cfg = self.cfg
        limit = cfg.udp_loop_limit
        key, is_guarded, slot = self._source(src)
        if cfg.udp_guard and (is_guarded or to_group(dst)):
            self.drop(GUARD, src, 1, now_ms)
            return False, None
        if limit and src[1] == self.port:
            self.drop(LOOP, src, 1, now_ms)
            return False, None
        s = None
        fp = 0
        if self.sources is not None:
            s = self._source_of(key, slot, now_ms)
            loop = False
            if limit:
                fp = (hash(bytes(data)) * self._fp_mul) & MASK64  # its fingerprint
                loop = s.loop_seen(fp, limit, now_ms)
            s.seen_ms = now_ms
            if loop:
                self.drop(LOOP, src, 1, now_ms)
                return False, None
        if not self.charge(s, src, now_ms, True):
            return False, None
        if s is not None and limit and not fp >> (64 - s.level) and fp not in s.fps:
            s.loop_echoed(fp)  # sampled and not kept yet
        return True, s

    # ---- echoing ----

    def send_batch(self, sock: socket.socket, out: list[Echo], now_ms: int) -> None:
        """Send the queued echoes: (data, source, destination, duplicate).
        Counted first, so whoever has an echo sees it counted; what is not
        sent is taken back. A full send buffer drops the rest (a datagram
        service must not block or queue without bound); a datagram that
        cannot be sent (too big for the route, no route) is dropped alone.
        Drops count datagrams: a duplicate's second copy not sent is none."""
        counts = self.counts
        counts["datagrams_out"] += len(out)
        counts["bytes_out"] += sum(len(o[0]) for o in out)
        flags = MSG_DONTWAIT | MSG_NOSIGNAL
        wildcard, family = self.wildcard, self.family
        for i, (data, to, dst, dup) in enumerate(out):
            try:
                if wildcard and dst is not None:
                    sock.sendmsg([data], write_dst(dst, family), flags, to)
                else:
                    sock.sendto(data, flags, to)
                continue
            except OSError as e:
                full = isinstance(e, _FULL) or e.errno == errno.ENOBUFS
            if full:
                rest = out[i:]
                counts["datagrams_out"] -= len(rest)
                counts["bytes_out"] -= sum(len(o[0]) for o in rest)
                self.drop(FULL, to, sum(not o[3] for o in rest), now_ms)
                return
            counts["datagrams_out"] -= 1
            counts["bytes_out"] -= len(data)
            self.drop(ERROR, to, not dup, now_ms)

    def fault(self, s: Source | None, data: Any, src: Any, dst: Dst | None, now_ms: int) -> int:
        """Faults on an admitted datagram: drop it, or hold its echo (one or
        two, duplicated) for latency. How many echoes go out now (0, 1, 2).
        Draws come in this order: drop, duplicate, delay. A duplicate is
        charged against both rate limits like any echo; without a token it
        is not sent."""
        f = self.faults
        if f is None:
            return 1
        if chance(self.rng, f.drop_ppm):
            self.drop(FAULT, src, 1, now_ms)
            return 0
        copies = 1 + chance(self.rng, f.duplicate_ppm)
        if copies == 2 and not self.charge(s, src, now_ms, False):
            copies = 1
        if f.latency_ms == 0 and f.jitter_ms == 0:
            return copies
        due = now_ms + delay(self.rng, f)
        for i in range(copies):
            # Held echo is bounded like a TCP connection's queue.
            if self.delayed.cost + len(data) + CHUNK_COST > self.cfg.max_pending:
                self.drop(FULL, src, i == 0, now_ms)
                break
            self.delayed.push(due, data, (src, dst, i == 1))
        return 0

    def readable(self, sock: socket.socket, now_ms: int) -> None:
        """Echo what is waiting on sock, a few batches at most."""
        counts, views = self.counts, self.views
        pktinfo, fixed = self.pktinfo, self.fixed
        for _ in range(BATCHES):
            out: list[Echo] = []
            n = 0
            for view in views:
                dst = fixed
                try:
                    if pktinfo:
                        size, anc, _, src = sock.recvmsg_into([view], ANC_SPACE, MSG_DONTWAIT)
                        dst = read_dst(anc)
                    else:
                        size, src = sock.recvfrom_into(view, DGRAM_MAX, MSG_DONTWAIT)
                except OSError:
                    break  # EAGAIN: all done; errors of earlier sends: nothing to do
                n += 1
                counts["datagrams_in"] += 1
                counts["bytes_in"] += size
                data = view[:size]
                admitted, s = self.admit(src, dst, data, now_ms)
                if not admitted:
                    continue
                for c in range(self.fault(s, data, src, dst, now_ms)):
                    out.append((data, src, dst, c == 1))
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
            out: list[Echo] = []
            while len(out) < BATCH and delayed and delayed.head.due_ms <= now_ms:
                c = delayed.pop()
                src, dst, dup = c.to
                out.append((c.data, src, dst, dup))
            self.send_batch(sock, out, now_ms)
        return self.due()

    def discard(self, now_ms: int) -> None:
        """The server stopped: the datagrams held by latency are dropped
        (counted, reason shutdown)."""
        while self.delayed:
            src, _, dup = self.delayed.pop().to
            self.drop(SHUTDOWN, src, not dup, now_ms)

    def set_faults(self, f: FaultsInts | None, sock: socket.socket, now_ms: int) -> None:
        """Faults from now on (None: none): reseeds the generator, sends what
        is now due."""
        self.faults = f
        self.rng = Rng(f.seed if f is not None else 0, 0)
        self.delayed.hurry(now_ms if f is None else now_ms + f.latency_ms + f.jitter_ms)
        self.release(sock, now_ms)
