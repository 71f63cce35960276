"""Fault injection over TCP, end to end on both engines with real sockets:
every fault of pyecho.Faults, changes at runtime from other threads, the
max_pending bound on held echo, the same random choices for the same seed,
and attacks (races with shutdown, clients that vanish mid-delay). Timing is
checked against lower bounds and generous upper bounds, never tightly.
(tests/test_faults.py is about hostile peers without fault injection.)"""

from __future__ import annotations

import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import pytest
from procserver import ProcServer
from spec_rng import SplitMix64
from streams import MIB, Pattern, Pump

import pyecho
from conftest import (
    LOOPBACK,
    RUNNABLE,
    SANITIZED,
    Recorder,
    open_fds,
    raise_fd_limit,
    scaled,
    wait_for,
)
from differential import run_matrix
from pyecho._config import CLOSE_REASONS, DROP_REASONS
from pyecho._faults import FAULTS

READ_CHUNK = 64 * 1024  # what the server reads at once in raw mode
# The engines' clock counts whole milliseconds, read once per loop turn: a
# delay measured from outside may look up to a millisecond short.
MS = 0.002


@contextmanager
def tcp_server(
    engine: str, faults: pyecho.Faults | None = None, mode: str = "raw", **kw: Any
) -> Iterator[tuple[pyecho.EchoServer, Recorder]]:
    rec = Recorder()
    with pyecho.EchoServer(
        (LOOPBACK, 0), engine=engine, mode=mode, faults=faults, on_event=rec, **kw
    ) as server:
        server.start()
        yield server, rec


def connect(server: pyecho.EchoServer, timeout: float = 5) -> socket.socket:
    return socket.create_connection(server.server_address, timeout=timeout)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    got = b""
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return got


def recv_to_eof(sock: socket.socket) -> bytes:
    got = b""
    while chunk := sock.recv(65536):
        got += chunk
    return got


def closes(rec: Recorder) -> list[tuple[int, str | None]]:
    return [(conn_id, reason) for kind, conn_id, _, reason in rec.summary() if kind == "close"]


def turn(sock: socket.socket) -> None:
    """One echo round trip. set_faults() applies at the start of the loop's
    next turn; input read after this round trip is read in a later turn, so
    with the new faults."""
    sock.sendall(b".")
    assert recv_exactly(sock, 1) == b"."


def in_thread(fn: Any, *args: Any) -> None:
    """Call fn on another thread (set_faults() is for any thread) and wait."""
    t = threading.Thread(target=fn, args=args)
    t.start()
    t.join(10)


# ---- latency and jitter -----------------------------------------------------------


def test_latency_holds_each_echo(engine: str) -> None:
    with tcp_server(engine, pyecho.Faults(latency=0.05)) as (server, _):
        with pyecho.EchoClient(server.server_address, engine=engine, mode="raw") as c:
            for i in range(3):
                t0 = time.monotonic()
                assert c.echo(b"late %d" % i) == b"late %d" % i
                assert 0.05 - MS <= time.monotonic() - t0 < 0.5


def test_jitter_draws_each_chunks_delay_from_the_seed(engine: str) -> None:
    """latency 30 ms, jitter 20 ms, seed 5: chunk k of connection 1 is held
    the k-th delay docs/PROTOCOL.md's generator gives (stream = connection
    id); the echo cannot come sooner (1 ms for the clock's resolution)."""
    rng = SplitMix64(5, 1)
    delays = [rng.delay_ms(30, 20) / 1000 for _ in range(12)]
    assert min(delays) < 0.02 and max(delays) > 0.04  # the seed spreads them
    with tcp_server(engine, pyecho.Faults(latency=0.03, jitter=0.02, seed=5)) as (server, _):
        with connect(server) as s:
            for k, d in enumerate(delays):
                t0 = time.monotonic()
                s.sendall(b"chunk %02d" % k)
                assert recv_exactly(s, 8) == b"chunk %02d" % k
                took = time.monotonic() - t0
                assert d - MS <= took < d + 0.5, (k, d, took)


@pytest.mark.slow
def test_jitter_keeps_order_and_both_engines_agree() -> None:
    """The same bytes and the same closes on every server x client pair, the
    echo in order however the delays fall."""
    faults = pyecho.Faults(latency=0.01, jitter=0.01, seed=9)

    def scenario(server: pyecho.EchoServer, client: Any) -> list[bytes]:
        replies = []
        with client() as c:
            for i in range(8):
                replies.append(c.echo(b"line %d\n" % i))
            c.send(b"".join(b"piped %d\n" % i for i in range(20)))
            replies.append(c.echo(b"last\n"))
            replies.append(c.echo(b"exit\n"))
        return replies

    result = run_matrix(scenario, mode="line", faults=faults)
    assert result["transcript"][-2] == b"".join(b"piped %d\n" % i for i in range(20)) + b"last\n"
    assert result["transcript"][-1] == b""
    assert [e[3] for e in result["events"]] == [None, "quit"]


def test_pipelined_chunks_keep_their_order(engine: str) -> None:
    """Chunks read apart get different delays; none overtakes another."""
    with tcp_server(engine, pyecho.Faults(latency=0.02, jitter=0.02, seed=1)) as (server, _):
        with connect(server) as s:
            sent = b""
            for i in range(40):
                piece = b"<%d>" % i
                s.sendall(piece)
                sent += piece
                time.sleep(0.002)  # mostly separate reads, so separate delays
            assert recv_exactly(s, len(sent)) == sent


# ---- pacing: rate and slice ------------------------------------------------------------


def test_rate_paces_the_echo(engine: str) -> None:
    """N bytes at `rate` bytes/s take at least (N - burst)/rate; the burst
    is 10 ms of the rate."""
    rate, n = 50_000, 10_000
    with tcp_server(engine, pyecho.Faults(rate=rate)) as (server, _):
        with connect(server) as s:
            t0 = time.monotonic()
            s.sendall(b"r" * n)
            assert recv_exactly(s, n) == b"r" * n
            took = time.monotonic() - t0
    assert (n - rate // 100) / rate - MS <= took < 5


def test_rate_bucket_starts_full(engine: str) -> None:
    """At 1 byte/s the first byte goes at once (the bucket starts full), the
    next a second later. (The C core used to start it empty.)"""
    with tcp_server(engine, pyecho.Faults(rate=1)) as (server, _), connect(server) as s:
        t0 = time.monotonic()
        s.sendall(b"ab")
        assert s.recv(10) == b"a"
        assert time.monotonic() - t0 < 0.5


def test_slice_sends_spaced_pieces(engine: str) -> None:
    slice_, delay, n = 100, 0.1, 400
    with tcp_server(engine, pyecho.Faults(slice=slice_, slice_delay=delay)) as (server, _):
        with connect(server) as s:
            t0 = time.monotonic()
            s.sendall(b"s" * n)
            sizes = []
            while sum(sizes) < n:
                sizes.append(len(s.recv(4096)))
            took = time.monotonic() - t0
    assert all(size <= slice_ for size in sizes), sizes
    assert sum(sizes) == n
    assert (n // slice_ - 1) * delay - MS <= took < 3


# ---- cuts: limit and stall_after --------------------------------------------------------


def test_limit_ends_the_echo_after_exactly_that_many_bytes() -> None:
    """EOF after `limit` bytes of echo; the connection lingers like after the
    quit word, closes for reason "limit"; the same on every pair."""

    def scenario(server: pyecho.EchoServer, client: Any) -> tuple:
        with client() as c:
            first = c.echo(b"0123")
            with pytest.raises(pyecho.ConnectionClosedError) as e:
                c.echo(b"456789")
            return first, e.value.partial

    result = run_matrix(scenario, mode="raw", faults=pyecho.Faults(limit=7))
    assert result["transcript"] == (b"0123", b"456")
    assert [(e[0], e[3]) for e in result["events"]] == [("open", None), ("close", "limit")]
    assert result["stats"]["closed"]["limit"] == 1
    assert result["stats"]["bytes_out"] == 7


def test_after_the_limit_input_is_dropped_until_the_peer_closes(engine: str) -> None:
    with tcp_server(engine, pyecho.Faults(limit=5)) as (server, rec), connect(server) as s:
        s.sendall(b"abcdefgh")
        assert recv_to_eof(s) == b"abcde"
        s.sendall(b"more" * 1000)  # read and dropped: no reset
        time.sleep(0.05)
        s.shutdown(socket.SHUT_WR)
        wait_for(lambda: closes(rec) == [(1, "limit")])
        assert server.stats.bytes_out == 5


def test_lifting_stall_after_echoes_every_byte_in_order(engine: str) -> None:
    """Issue 15, item 8: AAAA, then BBBB while stalled, then set_faults(None)
    and CCCC: the client gets AAAABBBBCCCC, no hole, on an open connection."""
    with tcp_server(engine, pyecho.Faults(stall_after=4)) as (server, rec), connect(server) as s:
        s.sendall(b"AAAA")
        assert recv_exactly(s, 4) == b"AAAA"
        s.sendall(b"BBBB")
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.recv(10)
        s.settimeout(5)
        server.set_faults(None)
        s.sendall(b"CCCC")
        assert recv_exactly(s, 8) == b"BBBBCCCC"
        s.sendall(b"DD")
        assert recv_exactly(s, 2) == b"DD"
        assert closes(rec) == []
        wait_for(lambda: server.stats.bytes_out == 14)


def test_stall_after_stops_reading_and_keeps_every_byte(engine: str) -> None:
    """A stall is a stalled peer: past stall_after nothing is echoed and the
    connection is not read, so the client's sends block once the kernel's
    buffers are full (the server holds at most the one read that crossed the
    stall). A stall raised at runtime then lets the rest through in order."""
    total = 32 * MIB
    with tcp_server(engine, pyecho.Faults(stall_after=3)) as (server, _), connect(server) as s:
        pump = Pump(s, Pattern(seed=8), total)
        stalled_at = pump.send_until_stalled(stall=0.5, limit=60)
        assert stalled_at < total, "the server kept reading past the stall"
        time.sleep(0.05)
        assert server.stats.bytes_in <= READ_CHUNK
        assert server.stats.bytes_out == 3
        server.set_faults(pyecho.Faults(stall_after=stalled_at + 1000))
        time.sleep(0.05)
        server.set_faults(None)
        pump.run(limit=120)
        assert pump.received == total


# ---- ends: reset_after, refuse, close_delay, accept_delay ---------------------------------


def test_reset_after_resets_the_connection(engine: str) -> None:
    with tcp_server(engine, pyecho.Faults(reset_after=0.05)) as (server, rec):
        with connect(server) as s:
            t0 = time.monotonic()
            with pytest.raises(ConnectionResetError):
                s.recv(10)
            assert 0.05 - MS <= time.monotonic() - t0 < 2
        wait_for(lambda: closes(rec) == [(1, "reset_after")])


def test_reset_after_also_ends_a_lingering_connection(engine: str) -> None:
    """After the quit word the connection lingers (up to 2 s); reset_after
    resets it there too."""
    with tcp_server(engine, pyecho.Faults(reset_after=0.3), mode="seed") as (server, rec):
        with connect(server) as s:
            s.sendall(b"exit")
            assert s.recv(10) == b""  # lingering: our side is shut
            wait_for(lambda: closes(rec) == [(1, "reset_after")], 1.5)


def test_refuse_follows_the_seed() -> None:
    """refuse=0.5, seed=11: connection i is refused when the generator of
    stream i says so (docs/PROTOCOL.md), on both engines."""
    n = 40
    expected = [i for i in range(1, n + 1) if SplitMix64(11, i).chance(0.5)]
    assert 5 < len(expected) < 35
    for engine in RUNNABLE:
        with tcp_server(engine, pyecho.Faults(refuse=0.5, seed=11)) as (server, rec):
            for i in range(1, n + 1):
                try:  # the reset may come before connect() has returned
                    with connect(server) as s:
                        s.sendall(b"hi")
                        reply = recv_exactly(s, 2)
                except ConnectionResetError:
                    reply = b"reset"
                    assert reply == (b"reset" if i in expected else b"hi"), i
                wait_for(lambda i=i: len(closes(rec)) == i)
            refused = sorted(cid for cid, reason in closes(rec) if reason == "refused")
            stats = server.stats
        assert refused == expected, engine
        assert (stats.accepted, stats.closed["refused"]) == (n, len(expected))


def test_close_delay_delays_the_servers_close(engine: str) -> None:
    with tcp_server(engine, pyecho.Faults(close_delay=0.1)) as (server, rec):
        with connect(server) as s:
            s.sendall(b"ab")
            assert recv_exactly(s, 2) == b"ab"
            t0 = time.monotonic()
            s.shutdown(socket.SHUT_WR)
            assert s.recv(10) == b""
            assert 0.1 - MS <= time.monotonic() - t0 < 1
        with connect(server):  # a client that closes at once: that close waits too
            pass
        wait_for(lambda: len(closes(rec)) == 2)
    assert [reason for _, reason in closes(rec)] == ["peer", "peer"]
    with tcp_server(engine, pyecho.Faults(close_delay=0.1), mode="seed") as (server, rec):
        with connect(server) as s:
            t0 = time.monotonic()
            s.sendall(b"exit")
            assert s.recv(10) == b""
            assert 0.1 - MS <= time.monotonic() - t0 < 1
        wait_for(lambda: closes(rec) == [(1, "quit")])


def test_accept_delay_leaves_a_new_connection_unserved(engine: str) -> None:
    with tcp_server(engine, pyecho.Faults(accept_delay=0.1)) as (server, _):
        t0 = time.monotonic()
        with connect(server) as s:
            s.sendall(b"first")
            assert recv_exactly(s, 5) == b"first"
            assert 0.1 - MS <= time.monotonic() - t0 < 1
            t1 = time.monotonic()
            s.sendall(b"then")
            assert recv_exactly(s, 4) == b"then"
            assert time.monotonic() - t1 < 0.09  # only new connections wait
        # A wait ends when accept_delay is set to 0 at runtime.
        server.set_faults(pyecho.Faults(accept_delay=30))
        with connect(server) as s:
            wait_for(lambda: server.stats.accepted == 2)
            s.sendall(b"waiting")
            time.sleep(0.05)
            t0 = time.monotonic()
            in_thread(server.set_faults, pyecho.Faults(latency=0.001))
            assert recv_exactly(s, 7) == b"waiting"
            assert time.monotonic() - t0 < 1


# ---- changes at runtime --------------------------------------------------------------------


def test_latency_off_at_runtime_releases_held_echo(engine: str) -> None:
    with tcp_server(engine, pyecho.Faults(latency=5)) as (server, _), connect(server) as s:
        t0 = time.monotonic()
        s.sendall(b"held")
        time.sleep(0.1)
        in_thread(server.set_faults, None)
        assert recv_exactly(s, 4) == b"held"
        assert time.monotonic() - t0 < 2
        assert server.faults is None
        t0 = time.monotonic()
        turn(s)  # a plain echo again
        assert time.monotonic() - t0 < 0.5


def test_latency_shortened_at_runtime_caps_held_echo(engine: str) -> None:
    with tcp_server(engine, pyecho.Faults(latency=5)) as (server, _), connect(server) as s:
        t0 = time.monotonic()
        s.sendall(b"held")
        time.sleep(0.05)
        in_thread(server.set_faults, pyecho.Faults(latency=0.1))
        assert recv_exactly(s, 4) == b"held"
        assert 0.1 - MS <= time.monotonic() - t0 < 2


def test_rate_added_to_an_open_connection(engine: str) -> None:
    rate, n = 20_000, 5_000
    with tcp_server(engine) as (server, _), connect(server) as s:
        turn(s)
        in_thread(server.set_faults, pyecho.Faults(rate=rate))
        turn(s)
        t0 = time.monotonic()
        s.sendall(b"r" * n)
        assert recv_exactly(s, n) == b"r" * n
        assert (n - rate // 100) / rate - MS <= time.monotonic() - t0 < 5


def test_limit_lowered_below_what_was_echoed_ends_the_connection(engine: str) -> None:
    """Regression: the C core computed a wrapped length here and spun forever."""
    with tcp_server(engine, pyecho.Faults(limit=1000)) as (server, rec), connect(server) as s:
        s.sendall(b"x" * 200)
        assert recv_exactly(s, 200) == b"x" * 200
        in_thread(server.set_faults, pyecho.Faults(limit=100))
        extra = b""
        for _ in range(5):  # one may still be read before the change applies
            s.sendall(b"y")
            got = s.recv(10)
            if not got:
                break
            extra += got
        else:
            pytest.fail("the connection was not ended")
        assert extra in (b"", b"y")
        s.shutdown(socket.SHUT_WR)
        wait_for(lambda: closes(rec) == [(1, "limit")])


def test_reset_after_set_late_resets_at_once(engine: str) -> None:
    with tcp_server(engine) as (server, rec), connect(server) as s:
        turn(s)
        time.sleep(0.1)
        in_thread(server.set_faults, pyecho.Faults(reset_after=0.05))  # already past
        with pytest.raises(ConnectionResetError):
            s.recv(10)
        wait_for(lambda: closes(rec) == [(1, "reset_after")])


def test_set_faults_before_serving_and_the_seed_kept(engine: str) -> None:
    with pyecho.EchoServer((LOOPBACK, 0), engine=engine, mode="raw") as server:
        assert server.faults is None
        server.set_faults(pyecho.Faults(latency=0.05, seed=5))  # not serving yet
        assert server.faults == pyecho.Faults(latency=0.05, seed=5)
        server.start()
        with connect(server) as s:
            t0 = time.monotonic()
            turn(s)
            assert time.monotonic() - t0 >= 0.05 - MS
        server.set_faults(pyecho.Faults(jitter=0.01))
        assert server.faults is not None and server.faults.seed is not None  # drawn
        server.set_faults(pyecho.Faults(seed=3))  # nothing acts: no faults
        assert server.faults is None
    with pyecho.EchoServer((LOOPBACK, 0), engine=engine, faults=pyecho.Faults()) as server:
        assert server.faults is None


def test_tcp_faults_are_checked(engine: str) -> None:
    with pyecho.EchoServer((LOOPBACK, 0), engine=engine) as server:
        with pytest.raises(ValueError, match="drop does not apply to TCP"):
            server.set_faults(pyecho.Faults(drop=0.1))
        with pytest.raises(TypeError, match="faults must be a pyecho.Faults"):
            server.set_faults({"latency": 1})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="slice_delay needs slice"):
        pyecho.Faults(slice_delay=0.1)
    with pytest.raises(ValueError):
        pyecho.Faults(refuse=1.5)
    with pytest.raises(ValueError):
        pyecho.Faults(latency=-1)


def test_the_documented_faults_are_the_dataclass() -> None:
    """docs/PROTOCOL.md's faults table has a row per Faults field, in order,
    with the transports it applies to; every close and drop reason is
    documented."""
    doc = (Path(__file__).parent.parent / "docs" / "PROTOCOL.md").read_text()
    section = doc.split("\n## Faults\n")[1].split("\n## ")[0]
    rows = [line.split("|") for line in section.splitlines() if line.startswith("| `")]
    assert [row[1].strip(" `") for row in rows] == [f.name for f in FAULTS]
    assert [row[3].strip() for row in rows] == [
        "/".join(t.upper() for t in f.transports) for f in FAULTS
    ]
    for reason in CLOSE_REASONS:
        assert f"  | `{reason}`" in doc, reason
    udp = doc.split("\n## UDP\n")[1].split("\n## ")[0]
    for reason in DROP_REASONS:
        assert f"`{reason}`" in udp, reason


# ---- held echo is bounded --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("faults", [{"latency": 5}, {"rate": 1000}], ids=["latency", "rate"])
def test_held_echo_counts_toward_max_pending(engine: str, faults: dict) -> None:
    """A client sending a lot to a delayed (or slow) connection: the server
    stops reading near max_pending (held bytes, 64 per held chunk, and queued
    echo all count), and nothing is lost once the faults go."""
    max_pending, n = 32 * 1024, 1 << 20
    data = bytes(range(256)) * (n // 256)
    with (
        tcp_server(engine, pyecho.Faults(**faults), max_pending=max_pending) as (server, _),
        pyecho.EchoClient(server.server_address, engine=engine, mode="raw", timeout=20) as c,
    ):
        result: list[bytes] = []
        echo = threading.Thread(target=lambda: result.append(c.echo(data)))
        echo.start()
        try:
            time.sleep(0.2)
            first = server.stats.bytes_in
            time.sleep(0.2)
            second = server.stats.bytes_in
            assert first == second, "reading did not pause"
            assert max_pending // 2 <= second <= max_pending + READ_CHUNK
        finally:
            server.set_faults(None)
            echo.join(20)
        assert result == [data]


# ---- attacks ------------------------------------------------------------------------------------


def test_set_faults_racing_shutdown(engine: str) -> None:
    """set_faults() from threads while the server stops, restarts and
    closes: every call either applies or says the server is closed."""
    errors: list[BaseException] = []
    for _ in range(5):
        server = pyecho.EchoServer((LOOPBACK, 0), engine=engine, mode="raw").start()
        stop = threading.Event()

        def hammer(server: pyecho.EchoServer = server, stop: threading.Event = stop) -> None:
            i = 0
            while not stop.is_set():
                try:
                    server.set_faults(pyecho.Faults(latency=0.001 * (i % 3)) if i % 2 else None)
                except ValueError as e:
                    if "closed server" not in str(e):
                        errors.append(e)
                    return
                except BaseException as e:  # noqa: BLE001 - reported below
                    errors.append(e)
                    return
                i += 1

        threads = [threading.Thread(target=hammer) for _ in range(4)]
        for t in threads:
            t.start()
        with connect(server) as s:
            turn(s)
        server.shutdown()
        server.start()
        with connect(server) as s:
            turn(s)
        server.close()
        stop.set()
        for t in threads:
            t.join(10)
    assert errors == []


def test_set_faults_from_many_threads_while_echoing(engine: str) -> None:
    """Faults that delay and pace but lose nothing, changed from eight
    threads while four clients echo: every echo is whole and in order."""
    choices = [
        None,
        pyecho.Faults(latency=0.005, seed=1),
        pyecho.Faults(latency=0.002, jitter=0.002, seed=2),
        pyecho.Faults(rate=200_000),
        pyecho.Faults(slice=7, slice_delay=0.001),
        pyecho.Faults(accept_delay=0.01, close_delay=0.01),
    ]
    stop = threading.Event()
    failures: list[BaseException] = []
    with tcp_server(engine, mode="line") as (server, _):

        def changer(k: int) -> None:
            i = k
            while not stop.is_set():
                server.set_faults(choices[i % len(choices)])
                i += 1
                time.sleep(0.001)

        def client(k: int) -> None:
            try:
                with pyecho.EchoClient(
                    server.server_address, engine=engine, mode="line", timeout=10
                ) as c:
                    for i in range(60):
                        line = b"client %d line %d %s\n" % (k, i, b"z" * (i * 13))
                        assert c.echo(line) == line
            except BaseException as e:  # noqa: BLE001 - reported below
                failures.append(e)

        changers = [threading.Thread(target=changer, args=(k,)) for k in range(8)]
        clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for t in changers + clients:
            t.start()
        for t in clients:
            t.join(60)
        stop.set()
        for t in changers:
            t.join(10)
        assert failures == []
        server.set_faults(None)
        with pyecho.EchoClient(server.server_address, engine=engine, mode="line") as c:
            assert c.echo(b"after\n") == b"after\n"
        wait_for(lambda: server.stats.open == 0)


_RST = struct.pack("ii", 1, 0)


@pytest.mark.parametrize(
    "faults",
    [
        {"latency": 0.1},
        {"latency": 0.05, "jitter": 0.05, "seed": 4},
        {"accept_delay": 0.1},
        {"close_delay": 0.1},
        {"rate": 100},
        {"slice": 1, "slice_delay": 0.05},
        {"reset_after": 0.05},
    ],
    ids=lambda f: ",".join(f),
)
def test_clients_vanishing_mid_delay(engine: str, faults: dict) -> None:
    """Clients that close (half of them with a reset) while their echo is
    held or paced: the server closes each, keeps no state, and serves on."""
    with tcp_server(engine, pyecho.Faults(**faults)) as (server, rec):
        for i in range(20):
            s = connect(server)
            s.sendall(b"gone before the echo %d" % i)
            if i % 2:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
            s.close()
        wait_for(lambda: server.stats.accepted == 20)
        wait_for(lambda: len(closes(rec)) == 20, 10, "every vanished client closed")
        assert server.stats.open == 0
        server.set_faults(None)
        with connect(server) as s:
            turn(s)


def test_a_slow_reader_under_slice_keeps_memory_bounded(engine: str) -> None:
    """The gate closed (slice_delay) and the client not reading: output
    stays queued, reading pauses at max_pending, nothing grows without bound."""
    max_pending = 16 * 1024
    with (
        tcp_server(engine, pyecho.Faults(slice=10, slice_delay=1), max_pending=max_pending) as (
            server,
            _,
        ),
        connect(server) as s,
    ):
        s.setblocking(False)
        sent = 0
        with suppress(BlockingIOError):
            for _ in range(1000):
                sent += s.send(b"q" * 65536)
        time.sleep(0.2)
        first = server.stats.bytes_in
        time.sleep(0.15)
        assert server.stats.bytes_in == first <= max_pending + READ_CHUNK
        assert sent > first  # the rest waits in the kernel's buffers


def test_a_connection_lingering_after_its_limit_makes_room_at_max_clients(engine: str) -> None:
    """After the limit a connection lingers like after the quit word: it
    counts toward max_clients, and a newcomer at the limit closes it, for
    the reason it was ending (limit)."""
    with (
        tcp_server(engine, pyecho.Faults(limit=3), max_clients=1) as (server, rec),
        connect(server) as first,
    ):
        first.sendall(b"abcdef")
        assert recv_to_eof(first) == b"abc"  # lingering now: it holds its descriptor
        with connect(server) as second:
            second.sendall(b"xy")
            assert recv_exactly(second, 2) == b"xy"
            wait_for(lambda: closes(rec)[:1] == [(1, "limit")])
            assert server.stats.rejected == 0


def test_refused_connections_leave_nothing_behind(engine: str) -> None:
    before = open_fds()
    with tcp_server(engine, pyecho.Faults(refuse=1.0)) as (server, rec):
        server_fds = open_fds() - before
        for _ in range(100):  # within the backlog: no SYN waits for a retry
            with suppress(ConnectionResetError), connect(server):
                pass
        wait_for(lambda: len(closes(rec)) == 100, 10)
        assert {reason for _, reason in closes(rec)} == {"refused"}
        assert server.stats.open == 0
        assert open_fds() - before == server_fds  # its own descriptors only


def test_set_faults_from_on_event(engine: str) -> None:
    """on_event runs on the serving thread: set_faults() from there is
    applied at the next turn, without a deadlock."""
    holder: list[pyecho.EchoServer] = []

    def on_event(event: pyecho.Event) -> None:
        if event.kind == "open":
            holder[0].set_faults(pyecho.Faults(latency=0.001 * (event.conn_id % 3)))

    with pyecho.EchoServer((LOOPBACK, 0), engine=engine, mode="raw", on_event=on_event) as server:
        holder.append(server)
        server.start()
        for i in range(5):
            with pyecho.EchoClient(server.server_address, engine=engine, mode="raw") as c:
                assert c.echo(b"%d" % i) == b"%d" % i
        assert server.faults is not None and server.faults.latency == 0.002  # set by open 5


def test_faults_outlive_a_shutdown(engine: str) -> None:
    """shutdown() closes connections with held echo (reason shutdown); the
    faults stay set for the next start()."""
    with tcp_server(engine, pyecho.Faults(latency=5)) as (server, rec), connect(server) as s:
        s.sendall(b"held")
        wait_for(lambda: server.stats.bytes_in == 4)
        server.shutdown()
        assert s.recv(10) == b""
        assert closes(rec) == [(1, "shutdown")]
        server.set_faults(pyecho.Faults(latency=0.05))
        server.start()
        with connect(server) as s2:
            t0 = time.monotonic()
            turn(s2)
            assert time.monotonic() - t0 >= 0.05 - MS


# ---- scale ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_delayed_connections(engine: str) -> None:
    """10,000 connections each under latency=0.1, three lines pipelined on
    each: every echo arrives whole and in order; the server's memory, at its
    peak (echo held) and after, grows by a bounded amount per connection
    (printed)."""
    import selectors

    n = scaled("PYECHO_FAULT_CONNECTIONS", 10_000)
    raise_fd_limit(n + 500)
    with ProcServer(engine, mode="line", faults={"latency": 0.1}, timeout=120) as server:
        rss_before = server.rss()
        socks: list[socket.socket] = []
        try:
            for i in range(n):
                socks.append(socket.create_connection(server.address, timeout=30))
                if i % 200 == 199:  # keep within the listen backlog (128)
                    wait_for(lambda i=i: server.stats()["accepted"] > i - 100, 60, "accepts")
            wait_for(lambda: server.stats()["open"] == n, 120, f"{n} connections open")
            lines = [[b"conn %05d line %d\n" % (i, k) for k in range(3)] for i in range(n)]
            t0 = time.monotonic()
            with selectors.DefaultSelector() as sel:
                for i, s in enumerate(socks):
                    s.setblocking(False)
                    sel.register(s, selectors.EVENT_READ, i)
                for k in range(3):
                    for i, s in enumerate(socks):
                        s.send(lines[i][k])  # small: always fits
                got = [b""] * n
                want = [b"".join(line) for line in lines]
                waiting = n
                deadline = time.monotonic() + 300
                while waiting:
                    assert time.monotonic() < deadline, f"{waiting} echoes missing"
                    for key, _ in sel.select(1.0):
                        i = key.data
                        data = socks[i].recv(4096)
                        assert data, f"connection {i} closed by the server"
                        got[i] += data
                        if len(got[i]) >= len(want[i]):
                            assert got[i] == want[i], f"connection {i}: {got[i]!r}"
                            sel.unregister(socks[i])
                            waiting -= 1
            took = time.monotonic() - t0
            rss_after, rss_peak = server.rss(), server.peak_rss()
        finally:
            for s in socks:
                s.close()
        wait_for(lambda: server.stats()["open"] == 0, 120, "every connection to close")
        stats = server.quit()
    per_conn = (rss_peak - rss_before) / n
    print(
        f"\n{engine}: {n} connections under latency=0.1, 3 lines each, all echoed in order "
        f"in {took:.1f} s; server RSS {rss_before / 2**20:.1f} MiB before, "
        f"{rss_peak / 2**20:.1f} MiB at the peak ({per_conn / 1024:.2f} KiB per connection), "
        f"{rss_after / 2**20:.1f} MiB after ({(rss_after - rss_before) / n / 1024:.2f} KiB)"
    )
    assert stats["closed"]["peer"] == n
    assert took >= 0.1
    if not SANITIZED:
        assert per_conn < 32 * 1024
