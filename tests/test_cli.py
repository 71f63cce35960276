"""`pyecho serve` and `pyecho client` end to end, as processes, both engines."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import pyecho
from conftest import ENGINES, LOOPBACK
from procs import PYECHO, serve

PAIRS = [(s, c) for s in ENGINES for c in ENGINES]


def run_client(cwd: Path, port: int, stdin: bytes, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*PYECHO, "client", "--port", str(port), *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        timeout=60,
    )


@pytest.fixture
def cwd(tmp_path: Path) -> Path:
    # Never the repository root: `-m pyecho` must import the installed package.
    return tmp_path


@pytest.mark.parametrize("server_engine, client_engine", PAIRS)
def test_piped_words_in_seed_mode(cwd: Path, server_engine: str, client_engine: str) -> None:
    server, port = serve(cwd, "--engine", server_engine)
    try:
        out = run_client(cwd, port, b"a b exit\n", "--engine", client_engine)
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"a\nb\n"
        assert out.stderr == b""  # stdin is not a terminal: no banner
        server.expect(r"Connect with client 127\.0\.0\.1:\d+")
        server.expect(r"^INFO :: Client want close\.\.\. BYE \(127\.0\.0\.1:\d+\)$")
    finally:
        server.kill()


@pytest.mark.parametrize("server_engine, client_engine", PAIRS)
def test_piped_lines_in_line_mode(cwd: Path, server_engine: str, client_engine: str) -> None:
    server, port = serve(cwd, "--engine", server_engine, "--mode", "line")
    try:
        out = run_client(
            cwd,
            port,
            b"hello world\n  two  spaces \nlast",
            "--engine",
            client_engine,
            "--mode",
            "line",
        )
        assert out.returncode == 0, out.stderr
        # Whole lines, spaces kept; the unterminated last line gets its newline.
        assert out.stdout == b"hello world\n  two  spaces \nlast\n"
        server.expect(r"^INFO :: Disconnect with client\.\.\. BYE \(127\.0\.0\.1:\d+\)$")
    finally:
        server.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_raw_mode_is_binary_safe(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine, "--mode", "raw")
    try:
        data = bytes(range(256)) * 64
        out = run_client(cwd, port, data, "--engine", engine, "--mode", "raw")
        assert out.returncode == 0, out.stderr
        assert out.stdout == data
    finally:
        server.kill()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("mode", ["seed", "line"])
def test_no_input_length_overflows_anything(cwd: Path, engine: str, mode: str) -> None:
    """The original's scanf("%s") into char[100] overflows on a long word."""
    server, port = serve(cwd, "--engine", engine, "--mode", mode)
    try:
        word = b"x" * 300_000  # several client pieces, thousands of server reads
        out = run_client(cwd, port, word + b"\nexit\n", "--engine", engine, "--mode", mode)
        assert out.returncode == 0, out.stderr
        assert out.stdout == word + b"\n"
    finally:
        server.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_serve_ctrl_c_with_clients_connected(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine)
    clients = [socket.create_connection((LOOPBACK, port), timeout=10) for _ in range(3)]
    try:
        for _ in clients:
            server.expect("Connect with client")
        started = time.monotonic()
        server.signal()
        status = server.wait(10)
        took = time.monotonic() - started
        assert status == 0
        assert took < 0.2, f"exit took {took:.3f}s after SIGINT"
        rest = server.rest()
        assert rest[:3] == ["", "You typed Ctrl + C", "Bye"]
        assert "INFO :: closed 3 client connections" in rest
        for c in clients:
            assert c.recv(10) == b""  # each client socket was closed: EOF
    finally:
        for c in clients:
            c.close()
        server.kill()
    with pytest.raises(ConnectionRefusedError):  # and the listening one
        socket.create_connection((LOOPBACK, port), timeout=10)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    err = result.stderr.decode()
    assert "Traceback" not in err, err
    assert err.count("\n") == 1, err
    assert result.stdout == b""
    return err.strip()


@pytest.mark.parametrize("engine", ENGINES)
def test_error_port_already_in_use(cwd: Path, engine: str) -> None:
    with pyecho.EchoServer((LOOPBACK, 0), engine="python") as other:
        port = other.server_address[1]
        result = subprocess.run(
            [*PYECHO, "serve", "--port", str(port), "--engine", engine],
            cwd=cwd,
            capture_output=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert one_line_error(result) == (
        f"pyecho: error: port {port} on 127.0.0.1 is already in use "
        "(is another server running there?)"
    )


@pytest.mark.parametrize("command", ["serve", "client"])
@pytest.mark.parametrize("port", ["70000", "-1", "http"])
def test_error_port_out_of_range(cwd: Path, command: str, port: str) -> None:
    result = subprocess.run(
        [*PYECHO, command, f"--port={port}"], cwd=cwd, capture_output=True, timeout=60
    )
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "Traceback" not in err
    assert "argument --port: port must be" in err


@pytest.mark.parametrize("engine", ENGINES)
def test_error_connection_refused(cwd: Path, engine: str) -> None:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))  # bound, never listening: connections are refused
        port = s.getsockname()[1]
        result = run_client(cwd, port, b"hi\n", "--engine", engine)
    assert result.returncode == 1
    assert one_line_error(result) == (
        f"pyecho: error: cannot connect to 127.0.0.1:{port}: connection refused "
        "(is the server running?)"
    )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("command", ["serve", "client"])
def test_error_unknown_host(cwd: Path, engine: str, command: str) -> None:
    result = subprocess.run(
        [*PYECHO, command, "--host", "no-such-host.invalid", "--engine", engine],
        cwd=cwd,
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert one_line_error(result).startswith("pyecho: error: unknown host 'no-such-host.invalid'")


@pytest.mark.parametrize("engine", ENGINES)
def test_error_permission_denied_on_a_well_known_port(cwd: Path, engine: str) -> None:
    argv = [*PYECHO, "serve", "--port", "80", "--engine", engine]
    if os.geteuid() == 0 and shutil.which("setpriv"):
        # root may bind low ports: drop that one capability to see what a user sees
        drop = ["--bounding-set=-net_bind_service", "--inh-caps=-net_bind_service"]
        argv = ["setpriv", *drop, "--", *argv]
    elif Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text().strip() == "0":
        pytest.skip("this machine lets everyone bind port 80")
    result = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=60)
    assert result.returncode == 1
    error = one_line_error(result)
    assert error.startswith("pyecho: error: permission denied to listen on port 80: ")
    assert "well-known ports" in error and "1024-49151" in error


def test_unknown_engine_or_mode_is_a_usage_error(cwd: Path) -> None:
    for args in (["--engine", "rust"], ["--mode", "http"]):
        result = subprocess.run([*PYECHO, "serve", *args], cwd=cwd, capture_output=True, timeout=60)
        assert result.returncode == 2
        assert b"invalid choice" in result.stderr and b"Traceback" not in result.stderr


def test_bench_subcommand_reaches_the_benchmark(cwd: Path) -> None:
    result = subprocess.run([*PYECHO, "bench", "--help"], cwd=cwd, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"usage: pyecho bench ")
    assert b"--quick" in result.stdout


@pytest.mark.parametrize("engine", ENGINES)
def test_client_against_a_server_in_another_mode(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine)  # seed mode
    try:
        result = run_client(
            cwd, port, b"hello\n", "--engine", engine, "--mode", "line", "--timeout", "0.5"
        )
        assert result.returncode == 1
        assert one_line_error(result) == (
            f"pyecho: error: the server at 127.0.0.1:{port} did not answer within 0.5s "
            "(does it speak --mode line?)"
        )
    finally:
        server.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_serve_whose_output_went_away_stops_with_one_line(cwd: Path, engine: str) -> None:
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(
        [*PYECHO, "serve", "--port", "0", "--engine", engine],
        cwd=cwd,
        stdout=write_end,
        stderr=subprocess.PIPE,
    )
    os.close(write_end)
    try:
        with os.fdopen(read_end, "rb") as out:  # like `pyecho serve | head -1`
            port = int(out.readline().split(b"127.0.0.1:")[1].split()[0])
        with socket.create_connection((LOOPBACK, port), timeout=10):
            assert proc.wait(10) == 1
        err = proc.stderr.read().decode()
        assert err.startswith("pyecho: error: stopped serving: [Errno 32] Broken pipe"), err
        assert err.count("\n") == 1, err
    finally:
        proc.kill()
        proc.wait(10)
        proc.stderr.close()


@pytest.mark.parametrize("engine", ENGINES)
def test_quit_detection_is_the_servers(cwd: Path, engine: str) -> None:
    """Only what the server's framing takes for the quit word ends the client."""
    server, port = serve(cwd, "--engine", engine, "--mode", "line")
    try:
        out = run_client(
            cwd,
            port,
            b"exit\r\r\nexit \nEXIT\nexit\r\nnot sent\n",
            "--engine",
            engine,
            "--mode",
            "line",
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"exit\r\r\nexit \nEXIT\n"
        server.expect(r"^INFO :: Client want close")
    finally:
        server.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_client_output_going_away_is_quiet(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine, "--mode", "line")
    try:
        lines = b"".join(b"line %d\n" % i for i in range(20000))
        client = subprocess.Popen(
            [*PYECHO, "client", "--port", str(port), "--engine", engine, "--mode", "line"],
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )

        def feed() -> None:
            try:
                client.stdin.write(lines)
                client.stdin.close()
            except BrokenPipeError:
                pass  # the client stopped reading: expected

        feeder = threading.Thread(target=feed)
        feeder.start()
        assert client.stdout.read(1) == b"l"  # like `| head -c1`
        client.stdout.close()
        assert client.wait(60) == 1
        feeder.join(timeout=60)
        assert client.stderr.read() == b""  # no traceback, no "server disconnected"
        client.stderr.close()
    finally:
        server.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_the_tail_of_a_long_line_is_not_the_quit_word(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine, "--mode", "line")
    try:
        long_line = b"x" * 65536 + b"exit\n"  # two client pieces, one line
        out = run_client(cwd, port, long_line + b"exit\n", "--engine", engine, "--mode", "line")
        assert out.returncode == 0, out.stderr
        assert out.stdout == long_line
        server.expect(r"^INFO :: Client want close")
    finally:
        server.kill()
