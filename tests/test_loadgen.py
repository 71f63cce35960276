"""The benchmark's C load generator (csrc/loadgen.c, its own library
libpyecho_loadgen): it must verify every echoed byte, so a server that
corrupts, drops, adds or stalls is an error, never a number; and its library
is checked against its header as the core's is."""

from __future__ import annotations

import errno
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import pyecho
from conftest import LOOPBACK
from pyecho.bench.loadgen import (
    ABI_STRUCTS,
    LIBRARY_ENV,
    LIBRARY_NAME,
    LoadGen,
    LoadGenError,
    _installed,
    load,
)

pytestmark = pytest.mark.native  # needs the C core

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
def test_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(OSError) as info:
        LoadGen(**kwargs)
    assert info.value.errno == errno.EINVAL


def test_run_before_connect_is_a_usage_error() -> None:
    with LoadGen(1, 64) as lg, pytest.raises(LoadGenError) as info:
        lg.run(0.1)
    assert info.value.kind == "usage"


@pytest.mark.slow
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


# ---- UDP -----------------------------------------------------------------------

Reply = Callable[[int, bytes], list[bytes]]


class TinyUdpServer:
    """A UDP server on a thread: datagram number n (counted from 0, over
    every socket) is answered with ``reply(n, data)``, a list of datagrams
    sent back to its sender ([] drops it, two copies duplicate it)."""

    def __init__(self, reply: Reply, host: str = LOOPBACK) -> None:
        self.sock = socket.socket(
            socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM
        )
        self.sock.bind((host, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.reply = reply
        self.count = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                data, addr = self.sock.recvfrom(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            out = self.reply(self.count, data)
            self.count += 1
            for d in out:
                self.sock.sendto(d, addr)

    def close(self) -> None:
        self.stopped.set()
        self.thread.join(5)
        self.sock.close()

    def __enter__(self) -> TinyUdpServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def at(n: int, change: Callable[[bytes], list[bytes]]) -> Reply:
    """Echo every datagram, but datagram n through ``change``."""

    def reply(i: int, data: bytes) -> list[bytes]:
        return change(data) if i == n else [data]

    return reply


def flip(position: int) -> Callable[[bytes], list[bytes]]:
    def change(data: bytes) -> list[bytes]:
        buf = bytearray(data)
        buf[position] ^= 0x01
        return [bytes(buf)]

    return change


def udp_loadgen(connections: int = 1, msg_size: int = 64, depth: int = 1, **kw: Any) -> LoadGen:
    return LoadGen(connections, msg_size, depth, transport="udp", **kw)


def test_udp_a_flipped_byte_is_a_mismatch() -> None:
    # One socket, one datagram in flight: the server's datagram 9 is number 9.
    with TinyUdpServer(at(9, flip(20))) as srv, udp_loadgen() as lg:
        lg.connect(LOOPBACK, srv.port)
        with pytest.raises(LoadGenError) as info:
            lg.run(5.0)
    err = info.value
    assert (err.kind, err.errno) == ("mismatch", errno.EBADMSG)
    assert (err.conn, err.datagram, err.offset, err.size) == (0, 9, 20, 64)
    assert "socket 0, datagram 9, byte 20 of 64" in str(err)
    assert "echoed datagram differs" in str(err)


def test_udp_a_changed_sequence_number_is_a_mismatch() -> None:
    # Byte 2 of the tag is in the sequence number: the echo names a datagram
    # never sent.
    with TinyUdpServer(at(5, flip(2))) as srv, udp_loadgen() as lg:
        lg.connect(LOOPBACK, srv.port)
        with pytest.raises(LoadGenError) as info:
            lg.run(5.0)
    err = info.value
    assert err.kind == "mismatch"
    assert (err.offset, err.datagram) == (2, None)


def test_udp_a_flipped_byte_while_connecting_is_a_mismatch() -> None:
    with TinyUdpServer(at(1, flip(63))) as srv, udp_loadgen(3) as lg:
        with pytest.raises(LoadGenError) as info:
            lg.connect(LOOPBACK, srv.port)
    assert info.value.kind == "mismatch"
    assert (info.value.offset, info.value.datagram) == (63, 0)


@pytest.mark.parametrize("size", [63, 65, 7, 0])
def test_udp_a_datagram_of_the_wrong_size_is_a_mismatch(size: int) -> None:
    def resize(data: bytes) -> list[bytes]:
        return [(data + b"!")[:size]]

    with TinyUdpServer(at(4, resize)) as srv, udp_loadgen() as lg:
        lg.connect(LOOPBACK, srv.port)
        with pytest.raises(LoadGenError) as info:
            lg.run(5.0)
    err = info.value
    assert err.kind == "mismatch"
    assert err.size == size
    assert err.offset == min(size, 64)  # the first byte missing, or the first extra
    assert err.datagram == (4 if size >= 8 else None)


def test_udp_a_duplicated_datagram_is_extra() -> None:
    with TinyUdpServer(at(6, lambda d: [d, d])) as srv, udp_loadgen(depth=4) as lg:
        lg.connect(LOOPBACK, srv.port)
        with pytest.raises(LoadGenError) as info:
            lg.run(5.0)
    err = info.value
    assert (err.kind, err.errno) == ("extra", errno.EPROTO)
    assert err.datagram is not None
    assert "echoed twice" in str(err)


def test_udp_an_echo_sent_to_another_socket_is_a_mismatch() -> None:
    """A server that mixes up its clients: socket 1's datagram goes to 0."""
    clients: list[tuple[str, int]] = []

    class Swapper(TinyUdpServer):
        def _serve(self) -> None:
            while not self.stopped.is_set():
                try:
                    data, addr = self.sock.recvfrom(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if addr not in clients:
                    clients.append(addr)
                to = clients[0] if len(clients) == 2 and addr == clients[1] else addr
                self.sock.sendto(data, to)

    with Swapper(lambda n, d: [d]) as srv, udp_loadgen(2, connect_window=1) as lg:
        with pytest.raises(LoadGenError) as info:
            lg.connect(LOOPBACK, srv.port)
            lg.run(5.0)
    assert info.value.kind == "mismatch"
    assert info.value.conn == 0


def test_udp_an_echo_of_a_datagram_not_sent_yet_is_a_mismatch() -> None:
    """A server that answers ahead: with datagram 5's echo it sends one
    claiming to be the next datagram (the tag's sequence number plus one),
    before or after the load generator sent that one."""

    def ahead(data: bytes) -> list[bytes]:
        tag = int.from_bytes(data[:8], sys.byteorder) + 1
        return [data, tag.to_bytes(8, sys.byteorder) + data[8:]]

    with TinyUdpServer(at(5, ahead)) as srv, udp_loadgen() as lg:
        lg.connect(LOOPBACK, srv.port)
        with pytest.raises(LoadGenError) as info:
            lg.run(5.0)
    assert info.value.kind == "mismatch"


def test_udp_a_dropped_datagram_is_counted_lost() -> None:
    with TinyUdpServer(at(10, lambda d: [])) as srv:
        with udp_loadgen(depth=2, loss_timeout=0.1) as lg:
            lg.connect(LOOPBACK, srv.port)
            r = lg.run(0.3)
    # Exactly one never came back (on a loaded machine an echo slower than
    # the loss timeout would count as lost and late too).
    assert r.lost - r.late == 1
    assert r.round_trips > 10
    assert r.bytes == r.round_trips * 64


@pytest.mark.slow
def test_udp_a_late_echo_is_counted_lost_then_late() -> None:
    late: list[threading.Timer] = []

    class Delayer(TinyUdpServer):
        def _serve(self) -> None:
            while not self.stopped.is_set():
                try:
                    data, addr = self.sock.recvfrom(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if self.count == 10:  # held 0.3 s: past the 0.1 s loss timeout
                    t = threading.Timer(0.3, self.sock.sendto, (data, addr))
                    late.append(t)
                    t.start()
                else:
                    self.sock.sendto(data, addr)
                self.count += 1

    with Delayer(lambda n, d: [d]) as srv, udp_loadgen(loss_timeout=0.1) as lg:
        lg.connect(LOOPBACK, srv.port)
        r = lg.run(0.8)
        late[0].join()
    assert r.late >= 1 and r.lost == r.late  # every one came back
    assert r.round_trips > 10


def test_udp_a_silent_server_times_out() -> None:
    with TinyUdpServer(lambda n, d: []) as srv, udp_loadgen(2, timeout=0.3) as lg:
        with pytest.raises(LoadGenError) as info:
            lg.connect(LOOPBACK, srv.port)
    assert info.value.kind == "timeout"


def test_udp_a_server_gone_silent_mid_run_loses_everything() -> None:
    # No echo at all during the run: every datagram counted lost, none late.
    with TinyUdpServer(lambda n, d: [d] if n < 2 else []) as srv:
        with udp_loadgen(2, depth=3, loss_timeout=0.05) as lg:
            lg.connect(LOOPBACK, srv.port)
            r = lg.run(0.2)
    assert r.round_trips == 0
    assert r.lost >= 6 and r.late == 0


def test_udp_nothing_listening() -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind((LOOPBACK, 0))
    port = probe.getsockname()[1]
    probe.close()
    with udp_loadgen() as lg, pytest.raises(LoadGenError) as info:
        lg.connect(LOOPBACK, port)
    assert info.value.kind == "connect"
    assert info.value.errno == errno.ECONNREFUSED


def test_udp_a_server_that_goes_away_mid_run() -> None:
    srv = TinyUdpServer(lambda n, d: [d])
    with udp_loadgen(2) as lg:
        lg.connect(LOOPBACK, srv.port)
        srv.close()  # the port now answers with ICMP port unreachable
        with pytest.raises(LoadGenError) as info:
            lg.run(5.0)
    assert info.value.kind == "closed"
    assert info.value.errno == errno.ECONNREFUSED
    assert "refused a datagram" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"msg_size": 7},  # no room for the tag
        {"msg_size": 65_508},  # more than a UDP datagram carries
        {"msg_size": 64, "mode": "line"},  # a datagram has no lines
    ],
)
def test_udp_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(OSError) as info:
        LoadGen(1, transport="udp", **kwargs)
    assert info.value.errno == errno.EINVAL


def test_unknown_transport() -> None:
    with pytest.raises(ValueError, match="transport"):
        LoadGen(1, 64, transport="sctp")


@pytest.mark.slow
@pytest.mark.parametrize(
    "host, connections, msg_size, depth",
    [
        (LOOPBACK, 3, 8, 1),  # the tag alone
        (LOOPBACK, 4, 64, 32),
        # The largest UDP datagram, two in flight: four overflow the server's
        # default 208 KiB receive buffer (and one is lost there).
        (LOOPBACK, 2, 65_507, 1),
        ("::1", 3, 100, 5),
    ],
)
def test_udp_correct_servers_pass(
    engine: str,
    host: str,
    connections: int,
    msg_size: int,
    depth: int,
) -> None:
    with pyecho.EchoServer(
        (host, 0), engine=engine, transport="udp", udp_rate=None, udp_rate_per_source=None
    ).start() as server:
        with udp_loadgen(connections, msg_size, depth, timeout=2.0) as lg:
            lg.connect(host, server.server_address[1])
            assert lg.open_connections == connections
            first = lg.run(0.2)
            second = lg.run(0.2)
        server.shutdown()
        stats = server.stats
    for r in (first, second):
        assert r.round_trips > 0
        assert (r.lost, r.late) == (0, 0)
        assert r.bytes == r.round_trips * msg_size
        assert 0 < r.lat_min_ns <= r.lat_p50_ns <= r.lat_p99_ns <= r.lat_max_ns
    total = connections + first.round_trips + second.round_trips
    assert stats.datagrams_in == stats.datagrams_out == total
    assert stats.bytes_in == stats.bytes_out == total * msg_size


# ---- its library: the benchmark's own, checked as the core is ---------------

LOAD_LOADGEN = (
    "from pyecho.bench import loadgen\n"
    "try:\n"
    "    loadgen.LoadGen(1, 64)\n"
    "except loadgen.LoadGenUnavailableError as e:\n"
    "    print('ERR', e)\n"
    "else:\n"
    "    print('LOADED')\n"
)


def _load_loadgen_with(library: Path, cwd: Path) -> str:
    env = {**os.environ, LIBRARY_ENV: str(library)}
    out = subprocess.run(
        [sys.executable, "-c", LOAD_LOADGEN],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def _fake_loadgen(tmp_path: Path, source: str) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build a fake library")
    c = tmp_path / "fake.c"
    c.write_text("#include <stddef.h>\n" + source)
    lib = tmp_path / "libfake.so"
    subprocess.run([cc, "-shared", "-fPIC", "-o", str(lib), str(c)], check=True, timeout=60)
    return lib


def test_the_installed_library_loads_and_matches_its_header(tmp_path: Path) -> None:
    ffi, lib = load()
    assert lib.echo_loadgen_abi_version() == lib.ECHO_LOADGEN_ABI_VERSION
    for name in ABI_STRUCTS:
        assert lib.echo_loadgen_abi_sizeof(name.encode()) == ffi.sizeof(name)
    assert lib.echo_loadgen_abi_sizeof(b"echo_config") == 0  # the core's, not here
    assert _load_loadgen_with(_installed(LIBRARY_NAME), tmp_path) == "LOADED\n"


def test_a_load_generator_of_another_abi_version_is_refused(tmp_path: Path) -> None:
    lib = _fake_loadgen(tmp_path, "int echo_loadgen_abi_version(void) { return 999; }\n")
    out = _load_loadgen_with(lib, tmp_path)
    assert f"ERR {lib} was built for load generator ABI version 999" in out
    assert f"unset {LIBRARY_ENV}" in out


def test_a_load_generator_whose_structs_differ_is_refused(tmp_path: Path) -> None:
    version = load()[1].ECHO_LOADGEN_ABI_VERSION
    lib = _fake_loadgen(
        tmp_path,
        f"int echo_loadgen_abi_version(void) {{ return {version}; }}\n"
        "size_t echo_loadgen_abi_sizeof(const char *n) { (void)n; return 1; }\n",
    )
    out = _load_loadgen_with(lib, tmp_path)
    assert f"ERR {lib} disagrees with its header on echo_loadgen_config (1 bytes" in out


def test_the_core_library_is_not_a_load_generator(tmp_path: Path) -> None:
    core = os.environ.get("PYECHO_LIBRARY") or str(
        pyecho._native._installed(pyecho._native.LIBRARY_NAME)
    )
    out = _load_loadgen_with(Path(core), tmp_path)
    assert f"ERR {core} is not a pyecho load generator library of this version" in out


def test_a_missing_load_generator_says_how_to_build_it(tmp_path: Path) -> None:
    out = _load_loadgen_with(tmp_path / "nothing.so", tmp_path)
    assert f"ERR the benchmark's load generator is not built: {tmp_path / 'nothing.so'}" in out
    assert "pip install ." in out
