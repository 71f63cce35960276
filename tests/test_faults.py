"""Faults and hostile clients, on both engines: a reader that never reads,
resets in the middle of a transfer, half-closes, silent clients, clients
leaving while the server shuts down. Nothing is lost, memory stays bounded.
"""

from __future__ import annotations

import socket
import struct
import threading
import time

import pytest
from procserver import ProcServer
from streams import MIB, Pattern, Pump

import pyecho
from conftest import LOOPBACK, SANITIZED, open_fds, scaled, wait_for

READ_CHUNK = 64 * 1024  # what both engines read at once (raw and line mode)


def rst_close(sock: socket.socket) -> None:
    """Close with a RST instead of a FIN (SO_LINGER with a zero timeout)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class RssSampler(threading.Thread):
    """Samples a process's resident memory every few milliseconds: VmHWM is
    only refreshed lazily by the kernel, so both are consulted."""

    def __init__(self, server: ProcServer) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.peak = server.rss()
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(0.005):
            self.peak = max(self.peak, self.server.rss())

    def stop(self) -> int:
        self._halt.set()
        self.join(5)
        return max(self.peak, self.server.peak_rss())


@pytest.mark.slow  # 256 MiB per engine and mode
@pytest.mark.parametrize("mode", ["raw", "line"])
def test_slow_reader_memory_stays_bounded_and_nothing_is_lost(engine: str, mode: str) -> None:
    """A client sends 256 MiB without reading: the server stops reading it
    (backpressure) and grows by less than 8 MiB; once the client reads,
    every byte of the 256 MiB arrives intact."""
    total = scaled("PYECHO_SLOW_READER_MIB", 256) * MIB
    max_pending = 256 * 1024  # the default
    with ProcServer(engine, mode=mode, quit_word=None) as server:
        # Warm up (imports, allocator pools, thread stacks) before the baseline.
        with socket.create_connection(server.address) as warm:
            Pump(warm, Pattern(1), 4 * MIB).run(60, half_close=True)
        wait_for(lambda: server.stats()["open"] == 0, 10, "the warm-up connection to close")
        before = server.stats()
        server.reset_peak()
        baseline = server.rss()
        sampler = RssSampler(server)
        sampler.start()

        with socket.create_connection(server.address) as sock:
            pump = Pump(sock, Pattern(2), total)
            stalled_at = pump.send_until_stalled(stall=1.0, limit=120)
            stats = server.stats()
            queued = (stats["bytes_in"] - before["bytes_in"]) - (
                stats["bytes_out"] - before["bytes_out"]
            )
            grown_while_stalled = sampler.peak - baseline
            # The server stopped reading: only socket buffers hold the rest.
            assert stalled_at < 64 * MIB, f"{stalled_at} bytes went in without being read"
            assert queued <= max_pending + READ_CHUNK + (64 * 1024 if mode == "line" else 0)

            pump.run(limit=600, half_close=True)  # now read: all of it comes back
            assert pump.received == total
        grown = sampler.stop() - baseline
        stats = server.quit()
    assert stats["bytes_in"] - before["bytes_in"] == total
    assert stats["bytes_out"] - before["bytes_out"] == total
    print(
        f"\n[{engine}/{mode}] slow reader: stalled after {stalled_at / MIB:.1f} MiB sent, "
        f"{queued / 1024:.0f} KiB queued in the server; server RSS growth "
        f"{grown_while_stalled / MIB:.2f} MiB while stalled, {grown / MIB:.2f} MiB peak over "
        f"{total / MIB:.0f} MiB echoed and verified"
    )
    if not SANITIZED:
        assert grown < 8 * MIB, f"server memory grew by {grown / MIB:.1f} MiB"


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raw", "line"])
def test_max_pending_bounds_queued_output(engine: str, mode: str) -> None:
    """With a small max_pending, what the server holds for a client that does
    not read (bytes read minus bytes written) stays within max_pending plus
    one read (plus a partial line), sampled throughout."""
    max_pending, max_line = 1000, 500
    bound = max_pending + READ_CHUNK + (max_line if mode == "line" else 0)
    with pyecho.EchoServer(
        (LOOPBACK, 0),
        engine=engine,
        mode=mode,
        quit_word=None,
        max_pending=max_pending,
        max_line=max_line,
    ) as server:
        server.start()
        with socket.create_connection(server.server_address) as sock:
            pump = Pump(sock, Pattern(3), 32 * MIB)
            done = threading.Event()
            worst = [0]

            def sample() -> None:
                while not done.is_set():
                    s = server.stats
                    worst[0] = max(worst[0], s.bytes_in - s.bytes_out)
                    time.sleep(0.001)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                stalled_at = pump.send_until_stalled(stall=0.5, limit=60)
            finally:
                done.set()
                sampler.join(5)
            assert stalled_at < 32 * MIB
            assert worst[0] <= bound, f"{worst[0]} bytes queued, bound {bound}"
            pump.run(limit=120, half_close=True)
        wait_for(lambda: server.stats.open == 0, 10)
        assert server.stats.closed["peer"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raw", "line"])
def test_reset_in_the_middle_of_a_transfer(engine: str, mode: str) -> None:
    """A client resets while megabytes are in flight both ways: the server
    counts a reset, frees the connection, and another client's transfer at
    the same time is unaffected."""
    fds = open_fds()
    with pyecho.EchoServer((LOOPBACK, 0), engine=engine, mode=mode, quit_word=None) as server:
        server.start()
        other = socket.create_connection(server.server_address)
        other_pump = Pump(other, Pattern(4), 8 * MIB)
        other_pump.send_until_stalled(stall=0.2, limit=30)  # the other is mid-transfer too

        victim = socket.create_connection(server.server_address)
        pump = Pump(victim, Pattern(5), 64 * MIB)
        pump.send_until_stalled(stall=0.5, limit=30)  # queues full both ways
        assert pump.sent < 64 * MIB
        rst_close(victim)
        wait_for(lambda: server.stats.closed["reset"] == 1, 10, "the reset to be seen")
        assert server.stats.open == 1

        other_pump.run(limit=60, half_close=True)
        other.close()
        wait_for(lambda: server.stats.open == 0, 10)
        stats = server.stats
        assert stats.closed["reset"] == 1 and stats.closed["peer"] == 1
        assert stats.accepted == 2
    assert open_fds() == fds


@pytest.mark.slow  # 16 MiB per engine and mode
@pytest.mark.parametrize("mode", ["raw", "line"])
def test_half_close_of_a_large_transfer(engine: str, mode: str) -> None:
    """16 MiB, then shutdown(SHUT_WR): the whole echo (a final partial line
    included), then the server's EOF."""
    with pyecho.EchoServer((LOOPBACK, 0), engine=engine, mode=mode, quit_word=None) as server:
        server.start()
        with socket.create_connection(server.server_address) as sock:
            pump = Pump(sock, Pattern(6, alphabet=b"abc\n"), 16 * MIB + 12345)
            pump.run(limit=120, half_close=True)
            assert pump.eof and pump.received == 16 * MIB + 12345
        wait_for(lambda: server.stats.open == 0, 10)
        assert server.stats.closed["peer"] == 1
        assert server.stats.bytes_out == 16 * MIB + 12345


def test_silent_clients_cost_nothing_and_block_no_one(engine: str) -> None:
    """Clients that connect and send nothing stay open (no idle_timeout),
    other clients are served meanwhile, and their close is a plain one."""
    with pyecho.EchoServer((LOOPBACK, 0), engine=engine, mode="line") as server:
        server.start()
        silent = [socket.create_connection(server.server_address) for _ in range(20)]
        wait_for(lambda: server.stats.open == 20, 10)
        with pyecho.EchoClient(server.server_address, engine=engine, mode="line", timeout=10) as c:
            assert c.echo(b"still served\n") == b"still served\n"
        for s in silent[:10]:
            s.close()
        wait_for(lambda: server.stats.closed["peer"] == 11, 10)
        assert server.stats.open == 10
        server.shutdown()  # the other ten are closed by the shutdown
        stats = server.stats
        assert stats.open == 0 and stats.closed["shutdown"] == 10
        assert all(s.recv(10) == b"" for s in silent[10:])
        for s in silent[10:]:
            s.close()
        assert stats.bytes_in == len(b"still served\n")


def test_clients_disconnecting_during_shutdown(engine: str) -> None:
    """While 40 clients stream data, half of them leave (FIN or RST) as the
    server shuts down: shutdown completes, every connection is accounted
    for once, no descriptor is left behind, and the server can serve again."""
    fds = open_fds()
    server = pyecho.EchoServer((LOOPBACK, 0), engine=engine, mode="raw")
    server.start()
    clients = [socket.create_connection(server.server_address) for _ in range(40)]
    wait_for(lambda: server.stats.open == 40, 10)
    for c in clients:
        c.setblocking(False)
    stop = threading.Event()

    def chatter() -> None:  # keep data flowing on every client until the end
        while not stop.is_set():
            for c in clients:
                try:
                    c.send(b"x" * 4096)
                    c.recv(65536)
                except OSError:
                    pass

    def leave() -> None:
        for i, c in enumerate(clients[:20]):
            try:
                rst_close(c) if i % 2 else c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    talker = threading.Thread(target=chatter, daemon=True)
    leaver = threading.Thread(target=leave, daemon=True)
    talker.start()
    time.sleep(0.05)  # let data flow first (pacing, not an assertion)
    leaver.start()
    server.shutdown()
    stop.set()
    talker.join(10)
    leaver.join(10)
    assert not talker.is_alive() and not leaver.is_alive()
    stats = server.stats
    assert stats.open == 0
    assert stats.accepted == 40 == sum(stats.closed.values())
    # The server serves again after the shutdown.
    server.start()
    with pyecho.EchoClient(server.server_address, engine=engine, mode="raw", timeout=10) as c:
        assert c.echo(b"again") == b"again"
    server.close()
    for c in clients:
        c.close()
    assert open_fds() == fds


def test_running_out_of_descriptors(engine: str) -> None:
    """A server whose process runs out of file descriptors (EMFILE) keeps
    serving the connections it has, leaves the others waiting in the listen
    backlog instead of failing, and accepts them as descriptors free up."""
    limit, total = 48, 80  # the listen backlog (128) holds the excess
    with ProcServer(engine, mode="raw", fd_limit=limit, backlog=128) as server:
        base = server.fds()
        socks = [socket.create_connection(server.address, timeout=10) for _ in range(total)]
        wait_for(lambda: server.fds() == limit, 10, "the server to use every descriptor")
        served = server.stats()["accepted"]
        assert served == limit - base < total
        # The accepted ones still echo while the server is out of descriptors.
        for s in socks[:served]:
            s.sendall(b"ping")
            assert s.recv(16) == b"ping"
        for s in socks[:served]:
            s.close()
        wait_for(lambda: server.stats()["accepted"] == total, 15, "the waiting connections")
        for s in socks[served:]:
            s.sendall(b"pong")
            assert s.recv(16) == b"pong"
            s.close()
        wait_for(lambda: server.stats()["open"] == 0, 10)
        stats = server.quit()
    assert stats["rejected"] == 0
    assert stats["closed"]["peer"] == total
