"""`pyecho serve` and `pyecho client` end to end, as processes, both engines."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

import pyecho
from conftest import ENGINES, LOOPBACK
from procs import PYECHO, Proc, serve
from pyecho import cli

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


def test_bench_subcommand_reaches_the_benchmark(cwd: Path) -> None:
    result = subprocess.run([*PYECHO, "bench", "--help"], cwd=cwd, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"usage: pyecho bench ")
    assert b"--quick" in result.stdout
    for name in (b"c50-64B", b"idle", b"u50-64B", b"u4-64B-w32"):  # TCP and UDP scenarios
        assert b"\n  " + name + b" " in result.stdout


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


# ---- usage: one line naming the flag, exit status 2 ----

USAGE_ERRORS = [
    ("serve --port 70000", "--port must be between 0 and 65535, got 70000"),
    ("client --port 0", "--port must be between 1 and 65535, got 0"),
    ("client --port -1", "--port must be between 1 and 65535, got -1"),
    ("serve --port abc", "--port must be a whole number, got 'abc'"),
    ("serve --mode foo", "--mode must be one of raw, line, seed; got 'foo'"),
    ("client --engine rust", "--engine must be one of native, python; got 'rust'"),
    ("serve --max-pending -1", "--max-pending must be between 1 and 1073741824, got -1"),
    ("serve --max-clients -1", "--max-clients must be between 0 and 2147483648, got -1"),
    ("serve --backlog 1e3", "--backlog must be a whole number, got '1e3'"),
    ("serve --bufsize 0", "--bufsize must be between 1 and 1048576, got 0"),
    ("client --max-line 16777217", "--max-line must be between 1 and 16777216, got 16777217"),
    ("serve --idle-timeout soon", "--idle-timeout must be a number of seconds, got 'soon'"),
    ("serve --idle-timeout -1", "--idle-timeout must be between 0 and 4e+06 seconds, got -1.0"),
    ("serve --idle-timeout 0.0001", "--idle-timeout must be at least 0.001 seconds, got 0.0001"),
    (
        "client --timeout 0",
        "--timeout must be a positive number of seconds up to 2e+06, got 0.0 "
        "(or --no-timeout: wait forever)",
    ),
    (
        "serve --quit-word=",
        "--quit-word must be 1 to 255 bytes long (or --no-quit-word: no quit word)",
    ),
    ("serve --bogus", "unrecognized arguments: --bogus"),
    ("serve --port", "argument --port: expected one argument"),
    ("", "the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize("argv, message", USAGE_ERRORS, ids=[a[0] for a in USAGE_ERRORS])
def test_usage_errors_are_one_line_naming_the_flag(
    argv: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv.split())
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"pyecho: error: {message}\n")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"pyecho {pyecho.__version__}\n"


@pytest.mark.parametrize(
    "command, description",
    [("serve", "Run an echo server until Ctrl+C"), ("client", "Send standard input to")],
)
def test_help_describes_the_command_and_every_default(
    command: str, description: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        cli.main([command, "--help"])
    out = capsys.readouterr().out
    assert description in " ".join(out.split())
    # One entry per option: its line and the wrapped lines under it.
    entries = [" ".join(e.split()) for e in re.split(r"\n(?=  -)", out.split("options:")[1])]
    flags = [e.split()[0].rstrip(",") for e in entries if e]
    assert "--port" in flags and "--bufsize" in flags
    for entry in entries:
        if entry and not entry.startswith(("-h", "--no-")):
            assert "(default: " in entry, entry
    # Every size and time says its unit.
    text = " ".join(entries)
    for flag in ("--bufsize", "--max-line", "--max-pending"):
        assert f"{flag} BYTES" in text or flag not in flags
    assert "(default: 99 bytes)" in text and "(default: 65536 bytes)" in text
    if command == "serve":
        assert "--idle-timeout SECONDS" in text and "(default: 262144 bytes)" in text
    else:
        assert "--timeout SECONDS" in text and "(default: 10.0 seconds)" in text


@pytest.mark.parametrize("engine", ENGINES)
def test_no_quit_word(cwd: Path, engine: str) -> None:
    """--no-quit-word: "exit" is a line like any other, for server and client."""
    server, port = serve(cwd, "--engine", engine, "--mode", "line", "--no-quit-word")
    try:
        out = run_client(
            cwd, port, b"exit\nstill here\n", "--engine", engine, "--mode", "line", "--no-quit-word"
        )
        assert out.returncode == 0, out.stderr
        assert out.stdout == b"exit\nstill here\n"
        server.expect(r"^INFO :: Disconnect with client")  # EOF, not the quit word
    finally:
        server.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_serve_sigterm_closes_everything_and_says_goodbye(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine)
    clients = [socket.create_connection((LOOPBACK, port), timeout=10) for _ in range(3)]
    try:
        for _ in clients:
            server.expect("Connect with client")
        server.signal(signal.SIGTERM)
        assert server.wait(10) == 0
        rest = server.rest()
        assert rest == ["Terminated (SIGTERM)", "Bye", "INFO :: closed 3 client connections"]
        assert server.stderr_lines == []
        for c in clients:
            assert c.recv(10) == b""  # each client socket was closed: EOF
    finally:
        for c in clients:
            c.close()
        server.kill()
    with pytest.raises(ConnectionRefusedError):  # and the listening one
        socket.create_connection((LOOPBACK, port), timeout=10)


def ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback on this machine: {e}")


@pytest.mark.parametrize("engine", ENGINES)
def test_ipv6_addresses_are_shown_in_brackets(cwd: Path, engine: str) -> None:
    ipv6_loopback()
    server = Proc([*PYECHO, "serve", "--host", "::1", "--port", "0", "--engine", engine], cwd)
    try:
        port = int(server.expect(r"serving on \[::1\]:(\d+) ").group(1))
        result = run_client(
            cwd, port, b"hi\n", "--host", "::1", "--engine", engine, "--mode", "line",
            "--timeout", "0.5",
        )  # fmt: skip
        server.expect(r"^INFO :: Connect with client \[::1\]:\d+$")
        assert one_line_error(result) == (
            f"pyecho: error: the server at [::1]:{port} did not answer within 0.5s "
            "(does it speak --mode line?)"
        )
    finally:
        server.kill()
    result = run_client(cwd, port, b"hi\n", "--host", "::1", "--engine", engine)
    assert one_line_error(result) == (
        f"pyecho: error: cannot connect to [::1]:{port}: connection refused "
        "(is the server running?)"
    )
