"""Soak: mixed random load on both engines for a bounded time, every byte
verified, every connection accounted for.

Three servers per engine (raw, line with a small max_line, seed), each in
its own process, take sessions from several client threads at once: streams
of random sizes with a half-close at the end, slow readers that stall the
server first, resets in the middle of a transfer, quit words, and the
EchoClient of either engine. Afterwards each server's close reasons must
match the sessions exactly, its descriptors be back where they started and
its memory have grown by less than 8 MiB.

    PYECHO_SOAK_SECONDS=600 pytest tests/test_soak.py -s   # the long run

PYECHO_SOAK_SECONDS (default 10, per engine), PYECHO_SOAK_THREADS (6) and
PYECHO_SOAK_SEED (random; printed) control it.
"""

from __future__ import annotations

import random
import selectors
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable

import pytest
from procserver import ProcServer
from streams import MIB, Pattern, Pump

import pyecho
from conftest import RUNNABLE, SANITIZED, scaled, wait_for

pytestmark = pytest.mark.slow

MAX_LINE = 4096
LINE_ALPHABET = b"abcdefgh \r\n"  # cannot spell the quit word
SESSION_LIMIT = 120  # seconds, per session


def _size(rng: random.Random, top: int) -> int:
    """Log-uniform in [1, top]: many small sessions, some big ones."""
    return max(1, int(2 ** rng.uniform(0, top.bit_length() - 1)))


def _line_bytes(rng: random.Random, n: int) -> bytes:
    return bytes(rng.choices(LINE_ALPHABET, k=n))


def exchange(sock: socket.socket, data: bytes, *, half_close: bool, until_eof: bool) -> bytes:
    """Send data while receiving; optionally half-close after it; receive
    until EOF (until_eof) or len(data) bytes. Returns what came back."""
    sock.setblocking(False)
    view = memoryview(data)
    sent, got, eof, shut = 0, bytearray(), False, False
    deadline = time.monotonic() + SESSION_LIMIT
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
        while not eof and (until_eof or len(got) < len(data)):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sent {sent}/{len(data)}, received {len(got)}")
            if sent == len(data) and half_close and not shut:
                sock.shutdown(socket.SHUT_WR)
                shut = True
            want = selectors.EVENT_READ | (selectors.EVENT_WRITE if sent < len(data) else 0)
            sel.modify(sock, want)
            for _, mask in sel.select(1.0):
                if mask & selectors.EVENT_WRITE and sent < len(data):
                    try:
                        sent += sock.send(view[sent : sent + 256 * 1024])
                    except BlockingIOError:
                        pass
                if mask & selectors.EVENT_READ:
                    try:
                        chunk = sock.recv(256 * 1024)
                    except BlockingIOError:
                        continue
                    if not chunk:
                        eof = True
                    got += chunk
    return bytes(got)


class Soak:
    def __init__(self, engine: str, servers: dict[str, ProcServer], seed: int) -> None:
        self.engine = engine
        self.servers = servers
        self.seed = seed
        self.lock = threading.Lock()
        self.expected: dict[str, Counter] = {mode: Counter() for mode in servers}
        self.kinds: Counter = Counter()
        self.verified = 0  # echoed bytes compared with what was sent
        self.errors: list[str] = []

    def record(self, mode: str, kind: str, reason: str, verified: int) -> None:
        with self.lock:
            self.expected[mode][reason] += 1
            self.kinds[f"{mode}/{kind}"] += 1
            self.verified += verified

    # ---- sessions: each returns (close reason the server must report, bytes verified)

    def stream(self, rng: random.Random, mode: str) -> tuple[str, int]:
        n = _size(rng, 4 * MIB)
        data = rng.randbytes(n) if mode == "raw" else _line_bytes(rng, n)
        with socket.create_connection(self.servers[mode].address, timeout=30) as sock:
            got = exchange(sock, data, half_close=True, until_eof=True)
        assert got == data, f"stream of {n}: {len(got)} bytes back, differ"
        return "peer", n

    def slow(self, rng: random.Random, mode: str) -> tuple[str, int]:
        n = _size(rng, 16 * MIB) + MIB
        alphabet = None if mode == "raw" else LINE_ALPHABET
        with socket.create_connection(self.servers[mode].address, timeout=30) as sock:
            pump = Pump(sock, Pattern(rng.randrange(1 << 30), alphabet=alphabet), n)
            pump.send_until_stalled(stall=0.2, limit=SESSION_LIMIT)
            pump.run(SESSION_LIMIT, half_close=True)
        return "peer", n

    def reset(self, rng: random.Random, mode: str) -> tuple[str, int]:
        first = b"ping\n"
        with socket.create_connection(self.servers[mode].address, timeout=30) as sock:
            assert exchange(sock, first, half_close=False, until_eof=False) == first
            extra = (
                rng.randbytes(_size(rng, 2 * MIB))
                if mode == "raw"
                else _line_bytes(rng, _size(rng, 2 * MIB))
            )
            try:
                sock.setblocking(False)
                sock.send(extra)  # some of it, unread echo piling up
            except (BlockingIOError, ConnectionError):
                pass
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return "reset", len(first)

    def quit(self, rng: random.Random, mode: str) -> tuple[str, int]:
        with socket.create_connection(self.servers[mode].address, timeout=30) as sock:
            if mode == "line":
                lines = _line_bytes(rng, _size(rng, MIB)) + b"\n"
                got = exchange(sock, lines + b"exit\n", half_close=False, until_eof=True)
                assert got == lines, f"{len(got)} bytes back for {len(lines)} before the quit"
                return "quit", len(lines)
            total = 0
            for _ in range(rng.randrange(1, 20)):  # seed: one message per read
                msg = _line_bytes(rng, rng.randrange(1, 99)).replace(b"\n", b".")
                assert exchange(sock, msg, half_close=False, until_eof=False) == msg
                total += len(msg)
            assert exchange(sock, b"exit\n", half_close=False, until_eof=True) == b""
            return "quit", total

    def client(self, rng: random.Random, mode: str) -> tuple[str, int]:
        engine = rng.choice(RUNNABLE)
        total = 0
        with pyecho.EchoClient(
            self.servers[mode].address,
            engine=engine,
            mode=mode,
            max_line=MAX_LINE,
            timeout=SESSION_LIMIT,
        ) as c:
            for _ in range(rng.randrange(1, 10)):
                if mode == "raw":
                    msg = rng.randbytes(_size(rng, MIB))
                elif mode == "line":
                    msg = _line_bytes(rng, _size(rng, 64 * 1024)) + b"\n"
                else:
                    msg = _line_bytes(rng, rng.randrange(1, 99)).replace(b"\n", b".")
                assert c.echo(msg) == msg, f"{engine} client, {len(msg)} bytes"
                total += len(msg)
        return "peer", total

    SESSIONS: dict[str, tuple[str, ...]] = {
        "raw": ("stream", "slow", "reset", "client"),
        "line": ("stream", "slow", "reset", "quit", "client"),
        "seed": ("quit", "client"),
    }

    def worker(self, index: int, deadline: float) -> None:
        rng = random.Random(self.seed * 1000 + index)
        while time.monotonic() < deadline and not self.errors:
            mode = rng.choice(list(self.servers))
            kind = rng.choice(self.SESSIONS[mode])
            session: Callable[[random.Random, str], tuple[str, int]] = getattr(self, kind)
            try:
                reason, verified = session(rng, mode)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                with self.lock:
                    self.errors.append(f"{mode}/{kind} (thread {index}): {e!r}")
                return
            self.record(mode, kind, reason, verified)


def test_soak(engine: str) -> None:
    seconds = scaled("PYECHO_SOAK_SECONDS", 10)
    threads = scaled("PYECHO_SOAK_THREADS", 6)
    seed = scaled("PYECHO_SOAK_SEED", random.randrange(1 << 20))
    servers = {
        "raw": ProcServer(engine, mode="raw", timeout=60),
        "line": ProcServer(engine, mode="line", max_line=MAX_LINE, timeout=60),
        "seed": ProcServer(engine, mode="seed", timeout=60),
    }
    try:
        before = {m: (s.fds(), s.rss()) for m, s in servers.items()}
        soak = Soak(engine, servers, seed)
        deadline = time.monotonic() + seconds
        workers = [
            threading.Thread(target=soak.worker, args=(i, deadline), daemon=True)
            for i in range(threads)
        ]
        for w in workers:
            w.start()
        for w in workers:
            w.join(seconds + 4 * SESSION_LIMIT)
        assert not any(w.is_alive() for w in workers), "a soak worker hung"
        assert not soak.errors, f"seed {seed}: " + "; ".join(soak.errors)
        for mode, server in servers.items():
            wait_for(lambda s=server: s.stats()["open"] == 0, 30, f"{mode} connections to close")
        after = {m: (s.fds(), s.rss()) for m, s in servers.items()}
        finals = {m: s.quit() for m, s in servers.items()}
    finally:
        for s in servers.values():
            s.kill()

    sessions = sum(soak.kinds.values())
    print(
        f"\n[{engine}] soak {seconds}s, seed {seed}, {threads} threads: {sessions} sessions, "
        f"{soak.verified / MIB:.1f} MiB echoed and verified; {dict(sorted(soak.kinds.items()))}"
    )
    for mode, stats in finals.items():
        closed = {reason: n for reason, n in stats["closed"].items() if n}
        print(
            f"  {mode}: {stats['accepted']} accepted, closed {closed}, "
            f"fds {before[mode][0]} -> {after[mode][0]}, "
            f"RSS {before[mode][1] / MIB:.1f} -> {after[mode][1] / MIB:.1f} MiB"
        )
        want = dict(soak.expected[mode])
        assert closed == want, f"{mode} server: {closed} != {want}"
        assert stats["accepted"] == sum(soak.expected[mode].values())
        assert stats["rejected"] == 0
        assert after[mode][0] == before[mode][0], f"{mode} server descriptors"
        if not SANITIZED:
            assert after[mode][1] - before[mode][1] < 8 * MIB, f"{mode} server memory"
    assert sessions > 0 and soak.verified > 0
