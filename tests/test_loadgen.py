"""The benchmark's C load generator (csrc/loadgen.c): it must verify every
echoed byte, so a server that corrupts, drops, adds or stalls is an error,
never a number."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Callable

import pytest

import pyecho
from conftest import LOOPBACK
from pyecho.bench.loadgen import LoadGen, LoadGenError

Handler = Callable[[socket.socket], None]


class TinyServer:
    """A thread-per-connection Python server running ``handler`` on each
    accepted socket (the load generator releases the GIL while it runs)."""

    def __init__(self, handler: Handler) -> None:
        self.listener = socket.create_server((LOOPBACK, 0))
        self.port = self.listener.getsockname()[1]
        self.handler = handler
        self.threads: list[threading.Thread] = []
        self.conns: list[socket.socket] = []
        self.accepter = threading.Thread(target=self._accept, daemon=True)
        self.accepter.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        try:
            self.handler(conn)
        except OSError:
            pass

    def close(self) -> None:
        self.listener.close()
        for c in self.conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            c.close()
        for t in self.threads:
            t.join(5)

    def __enter__(self) -> TinyServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def echo_with(change: Callable[[int, bytes], bytes | None]) -> Handler:
    """An echo handler that passes each chunk (and its stream offset) through
    ``change``; None closes the connection."""

    def handler(conn: socket.socket) -> None:
        offset = 0
        while True:
            data = conn.recv(65536)
            if not data:
                return
            out = change(offset, data)
            offset += len(data)
            if out is None:
                conn.close()
                return
            conn.sendall(out)

    return handler


def flip_at(position: int) -> Callable[[int, bytes], bytes]:
    def change(offset: int, data: bytes) -> bytes:
        if offset <= position < offset + len(data):
            buf = bytearray(data)
            buf[position - offset] ^= 0x01
            return bytes(buf)
        return data

    return change


def test_a_flipped_byte_in_the_run_is_a_mismatch() -> None:
    with TinyServer(echo_with(flip_at(1000))) as srv, LoadGen(1, 64, depth=4) as lg:
        lg.connect(LOOPBACK, srv.port)  # the first 64 bytes are fine
        with pytest.raises(LoadGenError) as info:
            lg.run(5.0)
    err = info.value
    assert err.kind == "mismatch"
    assert err.offset == 1000
    assert err.conn == 0
    assert err.errno == errno.EBADMSG
    assert "echoed byte differs" in str(err)


def test_a_flipped_byte_while_connecting_is_a_mismatch() -> None:
    with TinyServer(echo_with(flip_at(10))) as srv, LoadGen(3, 64) as lg:
        with pytest.raises(LoadGenError) as info:
            lg.connect(LOOPBACK, srv.port)
    assert info.value.kind == "mismatch"
    assert info.value.offset == 10


def test_an_early_close_is_an_error() -> None:
    def change(offset: int, data: bytes) -> bytes | None:
        return None if offset >= 640 else data

    with TinyServer(echo_with(change)) as srv, LoadGen(1, 64) as lg:
        lg.connect(LOOPBACK, srv.port)
        with pytest.raises(LoadGenError) as info:
            lg.run(5.0)
    assert info.value.kind == "closed"
    assert info.value.offset == 640


def test_an_extra_byte_is_an_error() -> None:
    def change(offset: int, data: bytes) -> bytes:
        return data + b"!" if offset >= 128 else data

    with TinyServer(echo_with(change)) as srv, LoadGen(1, 64) as lg:
        lg.connect(LOOPBACK, srv.port)
        with pytest.raises(LoadGenError) as info:
            lg.run(5.0)
    assert info.value.kind in ("extra", "mismatch")  # "!" may land in the next echo


def test_a_silent_server_times_out() -> None:
    def swallow(conn: socket.socket) -> None:
        while conn.recv(65536):
            pass

    with TinyServer(swallow) as srv, LoadGen(2, 64, timeout=0.3) as lg:
        with pytest.raises(LoadGenError) as info:
            lg.connect(LOOPBACK, srv.port)
    assert info.value.kind == "timeout"


def test_connection_refused() -> None:
    probe = socket.create_server((LOOPBACK, 0))
    port = probe.getsockname()[1]
    probe.close()
    with LoadGen(1, 64) as lg, pytest.raises(LoadGenError) as info:
        lg.connect(LOOPBACK, port)
    assert info.value.kind == "connect"
    assert info.value.errno == errno.ECONNREFUSED


@pytest.mark.parametrize(
    "kwargs",
    [
        {"connections": 0, "msg_size": 64},
        {"connections": 1, "msg_size": 0},
        {"connections": 1, "msg_size": 64, "depth": 0},
        {"connections": 1, "msg_size": 64 << 20},
    ],
)
def test_bad_settings(kwargs: dict) -> None:
    with pytest.raises(OSError) as info:
        LoadGen(**kwargs)
    assert info.value.errno == errno.EINVAL


def test_run_before_connect_is_a_usage_error() -> None:
    with LoadGen(1, 64) as lg, pytest.raises(LoadGenError) as info:
        lg.run(0.1)
    assert info.value.kind == "usage"


@pytest.mark.parametrize(
    "mode, connections, msg_size, depth",
    [
        ("raw", 3, 1, 1),
        ("raw", 4, 7, 5),
        ("raw", 2, 70_000, 2),  # larger than one read: partial sends and reads
        ("line", 3, 64, 16),
        ("line", 2, 1, 3),  # a message that is just "\n"
        ("seed", 3, 64, 4),  # reads split messages: still echoed unchanged
    ],
)
def test_correct_servers_pass(
    engine: str, mode: str, connections: int, msg_size: int, depth: int
) -> None:
    with pyecho.EchoServer((LOOPBACK, 0), engine=engine, mode=mode).start() as server:
        with LoadGen(connections, msg_size, depth, mode) as lg:
            lg.connect(*server.server_address)
            assert lg.open_connections == connections
            first = lg.run(0.2)
            second = lg.run(0.2)
        server.shutdown()
        stats = server.stats
    for r in (first, second):
        assert r.round_trips > 0
        assert r.bytes == r.round_trips * msg_size  # drained: whole messages only
        assert r.elapsed_ns > 0
        assert 0 < r.lat_min_ns <= r.lat_p50_ns <= r.lat_p90_ns <= r.lat_p99_ns
        assert r.lat_p99_ns <= r.lat_p999_ns <= r.lat_max_ns
        assert r.lat_min_ns <= r.lat_mean_ns <= r.lat_max_ns
    handshakes = connections * msg_size
    total = handshakes + first.bytes + second.bytes
    assert stats.bytes_in == stats.bytes_out == total
