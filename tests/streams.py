"""Deterministic byte streams and a non-blocking pump that sends one while
verifying its echo, for the load, fault and soak tests."""

from __future__ import annotations

import random
import selectors
import socket
import time

MIB = 1 << 20


class Pattern:
    """A reproducible stream of any length: 1 MiB random blocks, each
    stamped with its index so a lost, repeated or reordered block shows."""

    def __init__(self, seed: int, block: int = MIB, alphabet: bytes | None = None) -> None:
        rng = random.Random(seed)
        if alphabet is None:
            self._block = rng.randbytes(block)
        else:
            self._block = bytes(rng.choices(alphabet, k=block))
        self.block = block
        self._cache: dict[int, bytes] = {}

    def _chunk(self, index: int) -> bytes:
        chunk = self._cache.get(index)
        if chunk is None:
            stamp = b"%015d|" % index
            chunk = stamp + self._block[len(stamp) :]
            if len(self._cache) >= 4:
                self._cache.clear()
            self._cache[index] = chunk
        return chunk

    def slice(self, start: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            index, offset = divmod(start, self.block)
            n = min(length, self.block - offset)
            out += self._chunk(index)[offset : offset + n]
            start += n
            length -= n
        return bytes(out)


class Mismatch(AssertionError):
    pass


class Pump:
    """Send ``total`` bytes of a pattern on a non-blocking socket and verify
    that what comes back is exactly the same stream (an echo)."""

    def __init__(self, sock: socket.socket, pattern: Pattern, total: int, piece: int = 256 << 10):
        self.sock = sock
        self.pattern = pattern
        self.total = total
        self.piece = piece
        self.sent = 0
        self.received = 0
        self.eof = False
        self._pending = b""  # sent bytes of the current piece not yet taken
        sock.setblocking(False)

    def _send_some(self) -> bool:
        if not self._pending:
            n = min(self.piece, self.total - self.sent)
            self._pending = self.pattern.slice(self.sent, n)
        try:
            n = self.sock.send(self._pending)
        except BlockingIOError:
            return False
        self._pending = self._pending[n:]
        self.sent += n
        return n > 0

    def _recv_some(self) -> bool:
        try:
            data = self.sock.recv(self.piece)
        except BlockingIOError:
            return False
        if not data:
            self.eof = True
            return False
        expected = self.pattern.slice(self.received, len(data))
        if data != expected:
            at = next(i for i in range(len(data)) if data[i] != expected[i])
            raise Mismatch(f"echo differs at stream byte {self.received + at}")
        self.received += len(data)
        if self.received > self.sent:
            raise Mismatch(f"received {self.received} bytes, more than the {self.sent} sent")
        return True

    def send_until_stalled(self, stall: float, limit: float) -> int:
        """Send without reading until the socket takes nothing for ``stall``
        seconds (the server stopped reading) or everything is sent; bytes
        sent. Fails after ``limit`` seconds."""
        deadline = time.monotonic() + limit
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_WRITE)
            while self.sent < self.total:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"still sending after {limit}s")
                if not sel.select(stall):
                    break  # not writable for `stall` seconds
                while self.sent < self.total and self._send_some():
                    pass
        return self.sent

    def run(self, limit: float, *, half_close: bool = False) -> None:
        """Send the rest and receive the whole echo at once, verifying it.
        With half_close, shut the write side after the last byte and expect
        the server's EOF after the echo."""
        deadline = time.monotonic() + limit
        shut = False
        with selectors.DefaultSelector() as sel:
            sel.register(self.sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while self.received < self.total or (half_close and not self.eof):
                if self.eof:
                    raise Mismatch(f"EOF after {self.received} of {self.total} echoed bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"after {limit}s: sent {self.sent}, echoed {self.received} of {self.total}"
                    )
                sending = self.sent < self.total
                if not sending and half_close and not shut:
                    self.sock.shutdown(socket.SHUT_WR)
                    shut = True
                want = selectors.EVENT_READ | (selectors.EVENT_WRITE if sending else 0)
                sel.modify(self.sock, want)
                for _, mask in sel.select(1.0):
                    if mask & selectors.EVENT_WRITE and sending:
                        self._send_some()
                    if mask & selectors.EVENT_READ:
                        while self._recv_some():
                            pass
