"""Fault injection's pieces that are not I/O: the twin of csrc/faults.c.

The random generator both engines share (so they make the same choices for
the same seed) and the queue that holds echo until its time.
"""

from __future__ import annotations

import errno
import os
from collections import deque
from typing import Any

from ._faults import FaultsInts

MASK = (1 << 64) - 1
PPM = 1_000_000
MAX_MS = 4_000_000_000  # keeps ms sums far from overflow in the C core
MAX_BYTES = 1 << 50

# What a chunk costs against max_pending beyond its bytes: many tiny chunks
# must not hold unbounded memory either.
CHUNK_COST = 64

# All off (the seed alone does nothing).
OFF = FaultsInts(0, 0, 0, 0, 0, -1, -1, -1, 0, 0, 0, 0, 0, 0, 0, 0, 0)


def faults_check(f: FaultsInts, transport: str) -> None:
    """OSError(EINVAL) unless the C core's echo_faults_check() accepts f."""
    bad = (
        any(v > MAX_MS for v in (f.latency_ms, f.jitter_ms, f.slice_delay_ms))
        or any(v > MAX_MS for v in (f.close_delay_ms, f.accept_delay_ms))
        or any(v < 0 for v in (f.latency_ms, f.jitter_ms, f.slice_delay_ms, f.rate, f.slice))
        or any(v < 0 for v in (f.close_delay_ms, f.accept_delay_ms, f.seed))
        or not 0 <= f.handshake_delay_ms <= MAX_MS
        or f.handshake_stall not in (0, 1)
        or not -1 <= f.limit <= MAX_BYTES
        or not -1 <= f.stall_after <= MAX_BYTES
        or not -1 <= f.reset_after_ms <= MAX_MS
        or f.rate > MAX_BYTES
        or f.slice > 0xFFFFFFFF
        or f.seed > MASK
        or any(
            not 0 <= p <= PPM
            for p in (f.refuse_ppm, f.drop_ppm, f.duplicate_ppm, f.handshake_reset_ppm)
        )
        or (f.slice == 0 and f.slice_delay_ms != 0)
    )
    tcp_only = (
        f.rate
        or f.slice
        or f.limit >= 0
        or f.reset_after_ms >= 0
        or f.stall_after >= 0
        or f.close_delay_ms
        or f.accept_delay_ms
        or f.refuse_ppm
        or f.handshake_delay_ms
        or f.handshake_stall
        or f.handshake_reset_ppm
    )
    udp_only = f.drop_ppm or f.duplicate_ppm
    if bad or (transport == "udp" and tcp_only) or (transport == "tcp" and udp_only):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))


def faults_off(f: FaultsInts) -> bool:
    """Does nothing act (whatever the seed)?"""
    return f._replace(seed=0) == OFF


# ---- the generator: splitmix64, the same numbers as the C core ----


class Rng:
    __slots__ = ("state",)

    def __init__(self, seed: int, stream: int) -> None:
        """fx_rng_seed(): one step, so nearby seeds diverge at once."""
        self.state = (seed ^ (stream * 0xD1B54A32D192ED03)) & MASK
        self.next()

    def next(self) -> int:
        self.state = z = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)


def chance(rng: Rng, ppm: int) -> bool:
    """True with probability ppm per million (draws only when 0 < ppm < 1e6)."""
    if ppm == 0:
        return False
    if ppm >= PPM:
        return True
    return rng.next() % PPM < ppm


def delay(rng: Rng, f: FaultsInts) -> int:
    """latency_ms plus a uniform draw in [-jitter_ms, +jitter_ms], at least 0
    (draws only when jitter_ms > 0)."""
    ms = f.latency_ms
    if f.jitter_ms > 0:
        ms += rng.next() % (2 * f.jitter_ms + 1) - f.jitter_ms
    return max(ms, 0)


# ---- the queue ----


class Chunk:
    """Bytes held until due_ms; ``to``: where a datagram goes (UDP)."""

    __slots__ = ("due_ms", "data", "to")

    def __init__(self, due_ms: int, data: Any, to: Any) -> None:
        self.due_ms = due_ms
        self.data = data
        self.to = to


class FxQueue:
    """A FIFO of chunks, each due no earlier than the one before it (order is
    kept); ``cost``: bytes held plus CHUNK_COST per chunk."""

    __slots__ = ("chunks", "cost")

    def __init__(self) -> None:
        self.chunks: deque[Chunk] = deque()
        self.cost = 0

    def __bool__(self) -> bool:
        return bool(self.chunks)

    @property
    def head(self) -> Chunk:
        return self.chunks[0]

    def push(self, due_ms: int, data: Any, to: Any = None, merge: bool = False) -> None:
        """Queue a copy of data due at due_ms (not before the tail's time); a
        TCP chunk (merge) due with the tail is merged into it."""
        chunks = self.chunks
        if chunks:
            tail = chunks[-1]
            if due_ms < tail.due_ms:
                due_ms = tail.due_ms  # never overtake what came before
            if merge and tail.due_ms == due_ms:
                tail.data += data
                self.cost += len(data)
                return
        chunks.append(Chunk(due_ms, bytearray(data) if merge else bytes(data), to))
        self.cost += len(data) + CHUNK_COST

    def pop(self) -> Chunk:
        c = self.chunks.popleft()
        self.cost -= len(c.data) + CHUNK_COST
        return c

    def hurry(self, due_ms: int) -> None:
        """Make every chunk due no later than due_ms (faults changed)."""
        for c in self.chunks:
            if c.due_ms > due_ms:
                c.due_ms = due_ms
