"""The faults' random choices as docs/PROTOCOL.md defines them, written from
the document (not imported from pyecho), so tests can say which connections
are refused and which datagrams dropped before either engine runs."""

from __future__ import annotations

MASK = (1 << 64) - 1
PPM = 1_000_000


class SplitMix64:
    def __init__(self, seed: int, stream: int) -> None:
        self.state = (seed ^ (stream * 0xD1B54A32D192ED03)) & MASK
        self.next()  # the first output is discarded

    def next(self) -> int:
        self.state = (self.state + 0x9E3779B97F4A7C15) & MASK
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        return z ^ (z >> 31)

    def chance(self, p: float) -> bool:
        ppm = round(p * PPM)
        if ppm == 0:
            return False
        if ppm >= PPM:
            return True
        return self.next() % PPM < ppm

    def delay_ms(self, latency_ms: int, jitter_ms: int) -> int:
        if jitter_ms == 0:
            return latency_ms
        return max(0, latency_ms + self.next() % (2 * jitter_ms + 1) - jitter_ms)
