"""`pyecho serve` and `pyecho client` end to end, as processes, both engines."""

from __future__ import annotations

import contextlib
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
from conftest import ENGINE_PAIRS, ENGINES, LOOPBACK, quick_if
from procs import PYECHO, Proc, serve
from pyecho import cli
from pyecho._faults import FAULTS


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


@pytest.mark.parametrize("server_engine, client_engine", ENGINE_PAIRS)
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


@pytest.mark.parametrize("server_engine, client_engine", ENGINE_PAIRS)
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


@pytest.mark.slow
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
        # At once, not when the clients leave (they never would): 0.2 s was
        # too tight for a loaded machine (0.214 s seen with one core busy).
        assert took < 1, f"exit took {took:.3f}s after SIGINT"
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


@pytest.mark.parametrize(
    "command, engine",
    # The quick tier: each command and each engine once.
    [
        quick_if((c == "serve") == (e == "native"), c, e)
        for c in ["serve", "client"]
        for e in ENGINES
    ],
)
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


@pytest.mark.slow
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

BIG = "1" + "0" * 309  # 1e309: more than a float holds

USAGE_ERRORS: list[tuple[str | list[str], str]] = [
    ("serve --port 70000", "--port must be between 0 and 65535, got 70000"),
    ("client --port 0", "--port must be between 1 and 65535, got 0"),
    ("client --port -1", "--port must be between 1 and 65535, got -1"),
    ("serve --port abc", "--port must be a whole number, got 'abc'"),
    ("serve --mode foo", "--mode must be one of raw, line, seed; got 'foo'"),
    ("client --engine rust", "--engine must be one of auto, native, python; got 'rust'"),
    ("serve --max-pending -1", "--max-pending must be between 1 and 1073741824, got -1"),
    ("serve --max-clients -1", "--max-clients must be between 0 and 2147483648, got -1"),
    ("serve --backlog 1e3", "--backlog must be a whole number, got '1e3'"),
    ("serve --bufsize 0", "--bufsize must be between 1 and 1048576, got 0"),
    ("client --max-line 16777217", "--max-line must be between 1 and 16777216, got 16777217"),
    (
        "serve --idle-timeout soon",
        "--idle-timeout must be a time such as 30, 1.5s, 50ms or 2m (a plain number is "
        "seconds), got 'soon'",
    ),
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
    # units
    (
        "serve --latency soon",
        "--latency must be a time such as 30, 1.5s, 50ms or 2m (a plain number is seconds), "
        "got 'soon'",
    ),
    (
        "serve --rate 64Kb",
        "--rate must be a rate such as 1000, 64KiB or 1MB/s (bytes per second), got '64Kb'",
    ),
    (
        "serve --stall-after lots",
        "--stall-after must be a size such as 1000, 64KiB, 1MiB or 64kB (a plain number is "
        "bytes), got 'lots'",
    ),
    ("serve --max-pending 1.5", "--max-pending must be a whole number of bytes, got '1.5'"),
    ("serve --rate 0.5/s", "--rate must be a whole number of bytes/s, got '0.5/s'"),
    (
        "serve --max-pending 2GiB",
        "--max-pending must be between 1 and 1073741824, got 2147483648 (2GiB)",
    ),
    ("serve --slice 0", "--slice must be between 1 and 4294967295, got 0"),
    ("serve --limit=-1KiB", "--limit must be between 0 and 1125899906842624, got -1024 (-1KiB)"),
    ("serve --jitter=-10ms", "--jitter must be between 0 and 4e+06 seconds, got -0.01 (-10ms)"),
    (
        "serve --reset-after 0",
        "--reset-after must be a positive number of seconds up to 4e+06, got 0.0",
    ),
    (
        "serve --accept-delay 0.5ms",
        "--accept-delay must be at least 0.001 seconds, got 0.0005 (0.5ms)",
    ),
    ("serve --refuse 2", "--refuse must be a probability from 0 to 1, got 2.0"),
    ("serve --udp --drop 150%", "--drop must be a probability from 0 to 1, got 1.5 (150%)"),
    ("serve --duplicate half", "--duplicate must be a chance such as 0.1 or 10%, got 'half'"),
    ("serve --seed 7.5", "--seed must be a whole number, got '7.5'"),
    ("serve --seed -1", "--seed must be between 0 and 18446744073709551615, got -1"),
    (
        "client --timeout 0ms",
        "--timeout must be a positive number of seconds up to 2e+06, got 0.0 (0ms) "
        "(or --no-timeout: wait forever)",
    ),
    ("serve --slice-delay 5ms", "--slice-delay needs --slice: the size of the pieces it separates"),
    # what does not apply to the transport
    ("serve --drop 0.1", "--drop does not apply to TCP: it is for UDP (add --udp)"),
    ("serve --duplicate 1%", "--duplicate does not apply to TCP: it is for UDP (add --udp)"),
    (
        "serve --udp --rate 64KiB",
        "--rate does not apply to UDP: of the faults, UDP takes --latency, --jitter, "
        "--drop, --duplicate and --seed",
    ),
    (
        "serve --transport udp --limit 0",
        "--limit does not apply to UDP: of the faults, UDP takes --latency, --jitter, "
        "--drop, --duplicate and --seed",
    ),
    (
        "serve --udp --mode raw",
        "--mode does not apply to UDP: UDP echoes every datagram whole, with no modes, "
        "quit word or connections",
    ),
    (
        "serve --max-clients 5 --udp",
        "--max-clients does not apply to UDP: UDP echoes every datagram whole, with no "
        "modes, quit word or connections",
    ),
    (
        "client --udp --mode line",
        "--mode does not apply to UDP: UDP echoes every datagram whole, with no modes, "
        "quit word or connections",
    ),
    (
        "client --udp --no-quit-word",
        "--no-quit-word does not apply to UDP: UDP echoes every datagram whole, with no "
        "modes, quit word or connections",
    ),
    (
        "client --bufsize 10 --udp",
        "--bufsize does not apply to UDP: UDP echoes every datagram whole, with no modes, "
        "quit word or connections",
    ),
    (
        "serve --udp-rate-per-source 5",
        "--udp-rate-per-source does not apply to TCP: it is for UDP (add --udp)",
    ),
    ("serve --no-udp-guard", "--no-udp-guard does not apply to TCP: it is for UDP (add --udp)"),
    # a negative value with a unit after its flag is a value, not an option (issue 15)
    ("serve --latency -1s", "--latency must be between 0 and 4e+06 seconds, got -1.0 (-1s)"),
    (
        "serve --max-pending -1KiB",
        "--max-pending must be between 1 and 1073741824, got -1024 (-1KiB)",
    ),
    ("serve --jitter -.5ms", "--jitter must be between 0 and 4e+06 seconds, got -0.0005 (-.5ms)"),
    ("serve --max-clients -3", "--max-clients must be between 0 and 2147483648, got -3"),
    ("serve --latency -soon", "argument --latency: expected one argument"),  # not a number
    # numbers beyond any float (issue 15): one line, naming the flag and the range
    (f"serve --latency {BIG}", "--latency must be between 0 and 4e+06 seconds, got about 1e+309"),
    (
        f"serve --idle-timeout {BIG}",
        "--idle-timeout must be between 0 and 4e+06 seconds, got about 1e+309",
    ),
    (f"serve --jitter {BIG}ms", "--jitter must be between 0 and 4e+06 seconds, got 1e+306"),
    (
        f"serve --reset-after {BIG}",
        "--reset-after must be a positive number of seconds up to 4e+06, got about 1e+309",
    ),
    (
        f"client --timeout {BIG}",
        "--timeout must be a positive number of seconds up to 2e+06, got about 1e+309 "
        "(or --no-timeout: wait forever)",
    ),
    (f"serve --refuse {BIG}%", "--refuse must be a probability from 0 to 1, got 1e+307"),
    (f"serve --rate {BIG}KiB", "--rate must be between 1 and 1125899906842624, got about 1e+312"),
    (
        f"serve --seed -{BIG}",
        "--seed must be between 0 and 18446744073709551615, got about -1e+309",
    ),
    # more digits than Python reads into an int (4300): still the range
    (f"serve --bufsize {'9' * 5000}", "--bufsize must be between 1 and 1048576, got about 1e+4999"),
    (f"serve --backlog {'9' * 5000}", "--backlog must be between 1 and 65535, got about 1e+4999"),
    (
        f"serve --latency {'9' * 5000}s",
        "--latency must be between 0 and 4e+06 seconds, got about 1e+4999",
    ),
    (
        f"serve --latency 1.{'1' * 1001}",
        "--latency must be a time such as 30, 1.5s, 50ms or 2m (a plain number is seconds), "
        "with at most 1000 digits after the point, got '1.11111111111111111111111111111111111111'"
        "... (1003 characters)",
    ),
    (
        f"serve --port {'9' * 5000}",
        "--port must be between 0 and 65535, got about 1e+4999",
    ),
    # an empty host would listen on every interface without a word (issue 15)
    (
        ["serve", "--host", ""],
        "--host must not be empty: to listen on every interface, say so with --host 0.0.0.0 "
        "(IPv4) or --host :: (IPv6 and IPv4); the default, 127.0.0.1, keeps the server on "
        "this machine",
    ),
    (
        ["serve", "--host="],
        "--host must not be empty: to listen on every interface, say so with --host 0.0.0.0 "
        "(IPv4) or --host :: (IPv6 and IPv4); the default, 127.0.0.1, keeps the server on "
        "this machine",
    ),
    (
        ["client", "--host", ""],
        "--host must not be empty: give the server's address (default: 127.0.0.1)",
    ),
    ("serve --bogus", "unrecognized arguments: --bogus"),
    ("serve --port", "argument --port: expected one argument"),
    ("", "the following arguments are required: COMMAND"),
]


@pytest.mark.parametrize(
    "argv, message",
    USAGE_ERRORS,
    ids=[(a if isinstance(a, str) else " ".join(map(repr, a)))[:50] for a, _ in USAGE_ERRORS],
)
def test_usage_errors_are_one_line_naming_the_flag(
    argv: str | list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv.split() if isinstance(argv, str) else argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert (out, err) == ("", f"pyecho: error: {message}\n")


def test_version(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYECHO_ENGINE", raising=False)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    version, engine = capsys.readouterr().out.splitlines()
    assert version == f"pyecho {pyecho.__version__}"
    if pyecho.native_available():
        assert engine == "engine: native (the C core)"
    else:  # says why
        assert engine.startswith("engine: python (the pure-Python engine, because ")


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
    # Every size and time says its unit; the forms they take are shown once.
    text = " ".join(entries)
    for flag in ("--bufsize", "--max-line", "--max-pending"):
        assert f"{flag} SIZE" in text or flag not in flags
    assert "(default: 99 bytes)" in text and "(default: 65536 bytes)" in text
    if command == "serve":
        assert "--idle-timeout TIME" in text and "(default: 262144 bytes)" in text
    else:
        assert "--timeout TIME" in text and "(default: 10.0 seconds)" in text
    forms = " ".join(out.split())
    assert forms.count("Sizes: 1000 (bytes), 64kB (x1000), 64KiB or 1MiB (x1024).") == 1
    assert forms.count("Times: 30 (seconds), 1.5s, 50ms, 2m, 1h.") == 1
    # The faults: under their own heading, each with its default and unit.
    faults = out.split("\nfaults:\n")
    if command == "client":
        assert len(faults) == 1 and "--latency" not in out
        return
    section = faults[1].split("\nTLS:\n")[0]  # the TLS options follow
    listed = re.findall(r"^  (--[\w-]+)[ ,]", section, re.MULTILINE)
    assert listed == [s.flag for s in FAULTS]
    assert "--latency TIME" in text and "--rate RATE" in text and "--limit SIZE" in text
    assert "--drop CHANCE" in text and "--seed N" in text and "--no-latency" not in out
    by_flag = {e.split()[0].rstrip(","): e for e in entries if e}
    assert by_flag["--drop"].endswith("(default: 0.0) [UDP]")
    assert by_flag["--rate"].startswith("--rate RATE send at most this many bytes")
    assert by_flag["--rate"].endswith("(default: no limit) [TCP]")


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


@pytest.mark.slow
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


# ---- human units, faults, UDP, IPv6 ----

PARSED = [
    ("serve --latency 50ms", "latency", 0.05),
    ("serve --jitter 10ms", "jitter", 0.01),
    ("serve --rate 64KiB", "rate", 65536),
    ("serve --rate 1MB/s", "rate", 1_000_000),
    ("serve --slice 1kB", "slice", 1000),
    ("serve --slice 512 --slice-delay 2m", "slice_delay", 120.0),
    ("serve --limit 1000", "limit", 1000),
    ("serve --reset-after 1.5s", "reset_after", 1.5),
    ("serve --stall-after 1MiB", "stall_after", 1 << 20),
    ("serve --close-delay 250ms", "close_delay", 0.25),
    ("serve --accept-delay 1", "accept_delay", 1.0),
    ("serve --refuse 10%", "refuse", 0.1),
    ("serve --udp --drop 0.25", "drop", 0.25),
    ("serve --udp --duplicate 5%", "duplicate", 0.05),
    ("serve --seed 7", "seed", 7),
    ("serve --max-pending 1MiB", "max_pending", 1 << 20),
    ("serve --idle-timeout 30s", "idle_timeout", 30.0),
    ("serve --bufsize 1KiB", "bufsize", 1024),
    ("serve --max-line 64kB", "max_line", 64000),
    ("serve --udp --udp-rate 500", "udp_rate", 500),
    ("client --timeout 500ms", "timeout", 0.5),
    ("client --max-line 1MiB", "max_line", 1 << 20),
]


@pytest.mark.parametrize("argv, name, value", PARSED, ids=[a[0] for a in PARSED])
def test_options_take_human_units(argv: str, name: str, value: float) -> None:
    args = cli.build_parser().parse_args(argv.split())
    assert getattr(args, name) == value
    assert type(getattr(args, name)) is type(value)


def test_the_issues_fault_line_builds_its_faults() -> None:
    argv = "serve --latency 50ms --jitter 10ms --rate 64KiB --limit 1000".split()
    faults = cli._faults(cli.build_parser().parse_args(argv))
    assert faults == pyecho.Faults(latency=0.05, jitter=0.01, rate=65536, limit=1000)
    assert cli._faults(cli.build_parser().parse_args(["serve", "--seed", "7"])) is None


def serve_env() -> dict[str, str]:
    return {**os.environ, "PYTHONIOENCODING": "utf-8"}


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_faults_banner(cwd: Path, engine: str) -> None:
    argv = ["--latency", "50ms", "--jitter", "10ms", "--rate", "64KiB", "--limit", "1000"]
    server, _ = serve(cwd, "--engine", engine, *argv, "--seed", "7", env=serve_env())
    try:
        server.expect(
            r"^pyecho: faults: latency 50ms ± 10ms, rate 64 KiB/s, limit 1000 bytes, seed 7$"
        )
    finally:
        server.kill()
    # No seed given: the one drawn is printed, and repeats the run.
    server, _ = serve(cwd, "--engine", engine, "--udp", "--drop", "10%", env=serve_env())
    try:
        seed = server.expect(r"^pyecho: faults: drop 10%, seed (\d+)$").group(1)
    finally:
        server.kill()
    server, _ = serve(cwd, "--engine", engine, "--udp", "--drop", "0.1", "--seed", seed)
    try:
        server.expect(rf"^pyecho: faults: drop 10%, seed {seed}$")
    finally:
        server.kill()
    # A seed alone changes nothing: no faults line.
    server, _ = serve(cwd, "--engine", engine, "--seed", "7")
    try:
        server.signal(signal.SIGTERM)
        assert server.wait(10) == 0
        assert server.rest() == ["Terminated (SIGTERM)", "Bye"]
    finally:
        server.kill()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_latency_delays_every_echo(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine, "--mode", "raw", "--latency", "300ms")
    try:
        # A client that waits less than the latency gives up, saying so.
        result = run_client(
            cwd, port, b"hi", "--engine", engine, "--mode", "raw", "--timeout", "100ms"
        )
        assert result.returncode == 1
        assert one_line_error(result) == (
            f"pyecho: error: the server at 127.0.0.1:{port} did not answer within 0.1s "
            "(does it speak --mode raw?)"
        )
        # One that waits long enough gets its echo, no sooner than 300 ms.
        with socket.create_connection((LOOPBACK, port), timeout=10) as s:
            started = time.monotonic()
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
            assert time.monotonic() - started >= 0.299
    finally:
        server.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_fault_closes_are_logged(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine, "--mode", "raw", "--limit", "5")
    try:
        with socket.create_connection((LOOPBACK, port), timeout=10) as s:
            s.sendall(b"hello world")
            echoed = b""
            while chunk := s.recv(100):
                echoed += chunk
            assert echoed == b"hello"  # then EOF
            me = s.getsockname()[1]
        server.expect(rf"^INFO :: Closed by fault \(limit\)\.\.\. BYE \(127\.0\.0\.1:{me}\)$")
    finally:
        server.kill()


def udp_client(cwd: Path, port: int, stdin: bytes, *args: str) -> subprocess.CompletedProcess:
    return run_client(cwd, port, stdin, "--udp", *args)


@pytest.mark.parametrize("engine", ENGINES)
def test_udp_session(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine, "--udp")
    assert server.seen == [
        f"pyecho: serving UDP on 127.0.0.1:{port} ({engine} engine); press Ctrl+C to stop"
    ]
    try:
        # One datagram per line: spaces kept, an empty line is an empty datagram.
        lines = b"hello world\n\n  two  spaces \r\nlast"
        result = udp_client(cwd, port, lines, "--engine", engine)
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hello world\n\n  two  spaces \r\nlast\n"
        assert result.stderr == b""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # each line, whole
            s.settimeout(10)
            s.sendto(b"x" * 60000, (LOOPBACK, port))
            assert s.recv(65536) == b"x" * 60000
        server.signal()
        assert server.wait(10) == 0
        # Nothing per datagram: after the banner, only the goodbye.
        assert server.rest() == [
            "",
            "You typed Ctrl + C",
            "Bye",
            "INFO :: 5 datagrams received, 5 sent, 0 dropped",
        ]
        assert server.stderr_lines == []
    finally:
        server.kill()


@pytest.mark.parametrize("engine", ENGINES)
def test_udp_client_a_lost_datagram_is_one_line_not_a_hang(cwd: Path, engine: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind((LOOPBACK, 0))  # takes datagrams, never answers
        port = silent.getsockname()[1]
        result = udp_client(cwd, port, b"one\ntwo\n", "--engine", engine, "--timeout", "200ms")
        assert silent.recv(100) == b"one"  # sent, and nothing after it
    assert result.returncode == 1
    assert one_line_error(result) == (
        f"pyecho: error: no echo of line 1 from UDP 127.0.0.1:{port} within 0.2s: the "
        "datagram or its echo was lost (is a UDP echo server there?)"
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_udp_client_nothing_listening(cwd: Path, engine: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
    result = udp_client(cwd, port, b"hi\n", "--engine", engine)
    assert result.returncode == 1
    assert one_line_error(result) == (
        f"pyecho: error: nothing listens on UDP 127.0.0.1:{port}: the port is closed "
        "(is the server running with --udp?)"
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_udp_client_line_too_long_for_a_datagram(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine, "--udp")
    try:
        result = udp_client(cwd, port, b"ok\n" + b"x" * 70000 + b"\n", "--engine", engine)
        assert result.returncode == 1
        assert result.stderr == (
            b"pyecho: error: line 2 is longer than a UDP datagram can be (65527 bytes)\n"
        )
        assert result.stdout == b"ok\n"  # the line before it was echoed
    finally:
        server.kill()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_udp_latency_beyond_the_timeout(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine, "--udp", "--latency", "300ms")
    try:
        result = udp_client(cwd, port, b"late\n", "--engine", engine, "--timeout", "0.1")
        assert result.returncode == 1
        assert "no echo of line 1 from UDP" in one_line_error(result)
        result = udp_client(cwd, port, b"late\n", "--engine", engine, "--timeout", "5s")
        assert (result.returncode, result.stdout) == (0, b"late\n")
    finally:
        server.kill()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_udp_client_skips_late_duplicates(cwd: Path, engine: str) -> None:
    """A duplicate of line n's echo can arrive after the client moved on to
    line n + 1: it is not line n + 1's echo (a break found: it was taken
    for a wrong answer)."""
    faults = ["--duplicate", "100%", "--latency", "20ms", "--jitter", "15ms"]
    server, port = serve(cwd, "--engine", engine, "--udp", *faults)
    try:
        lines = b"".join(b"%d\n" % i for i in range(300))
        result = udp_client(cwd, port, lines, "--engine", engine)
        assert (result.returncode, result.stderr) == (0, b"")
        assert result.stdout == lines
    finally:
        server.kill()


@pytest.mark.slow
@pytest.mark.parametrize("engine", ENGINES)
def test_udp_drops_are_logged_once_per_reason_per_second(cwd: Path, engine: str) -> None:
    server, port = serve(cwd, "--engine", engine, "--udp", "--udp-rate-per-source", "5")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as burst:
            burst.bind((LOOPBACK, 0))
            me = burst.getsockname()[1]
            for i in range(50):
                burst.sendto(b"%d" % i, (LOOPBACK, port))
            first = server.expect(r"^INFO :: dropped (\d+) datagrams? \(rate limit per source\)")
            assert first.string == (
                f"INFO :: dropped {first.group(1)} datagram{'s' * (first.group(1) != '1')} "
                f"(rate limit per source), latest from 127.0.0.1:{me}"
            )
            # The bucket held 5 (a refill at 5/s takes 200 ms: the burst is over by then).
            echoed = []
            burst.settimeout(0.5)
            with contextlib.suppress(TimeoutError):
                while True:
                    echoed.append(burst.recv(100))
        n = len(echoed)
        assert echoed[:5] == [b"0", b"1", b"2", b"3", b"4"] and n < 50
        server.signal(signal.SIGTERM)
        assert server.wait(10) == 0
        assert server.rest() == [
            "Terminated (SIGTERM)",
            "Bye",
            f"INFO :: 50 datagrams received, {n} sent, {50 - n} dropped "
            f"(rate limit per source: {50 - n})",
        ]
    finally:
        server.kill()


@pytest.mark.parametrize(
    "sig, engine",
    # The quick tier: each signal and each engine once.
    [
        quick_if((sig == signal.SIGTERM) == (e == "native"), sig, e, id=f"{sig.name}-{e}")
        for sig in [signal.SIGTERM, signal.SIGINT]
        for e in ENGINES
    ],
)
def test_udp_server_stops_on_signals_like_tcp(cwd: Path, engine: str, sig: int) -> None:
    server, port = serve(cwd, "--engine", engine, "--udp")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.sendto(b"hi", (LOOPBACK, port))
            assert s.recv(10) == b"hi"
        server.signal(sig)
        assert server.wait(10) == 0
        goodbye = ["Terminated (SIGTERM)", "Bye"]
        if sig == signal.SIGINT:
            goodbye = ["", "You typed Ctrl + C", "Bye"]
        assert server.rest() == [*goodbye, "INFO :: 1 datagram received, 1 sent, 0 dropped"]
        assert server.stderr_lines == []
    finally:
        server.kill()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((LOOPBACK, port))  # the server's socket is closed: the port is free


@pytest.mark.parametrize("engine", ENGINES)
def test_ipv6_udp_in_brackets(cwd: Path, engine: str) -> None:
    ipv6_loopback()
    server, port = serve(cwd, "--engine", engine, "--udp", "--host", "::1")
    try:
        assert server.seen[0].startswith(f"pyecho: serving UDP on [::1]:{port} ")
        result = udp_client(cwd, port, b"v6\n", "--host", "::1", "--engine", engine)
        assert (result.returncode, result.stdout, result.stderr) == (0, b"v6\n", b"")
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as burst:
            for _ in range(3):
                burst.sendto(b"x", ("::1", port))  # from ::1: the guard lets it pass
    finally:
        server.kill()
    result = udp_client(cwd, port, b"v6\n", "--host", "::1", "--engine", engine)
    assert one_line_error(result) == (
        f"pyecho: error: nothing listens on UDP [::1]:{port}: the port is closed "
        "(is the server running with --udp?)"
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_ipv6_drop_log_in_brackets(cwd: Path, engine: str) -> None:
    ipv6_loopback()
    server, port = serve(
        cwd, "--engine", engine, "--udp", "--host", "::1", "--udp-rate-per-source", "1"
    )
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as burst:
            burst.bind(("::1", 0))
            for _ in range(3):
                burst.sendto(b"x", ("::1", port))
            me = burst.getsockname()[1]
            server.expect(rf"^INFO :: dropped \d+ datagrams? .*, latest from \[::1\]:{me}$")
    finally:
        server.kill()


@pytest.mark.parametrize(
    "transport, engine",
    # The quick tier: each transport and each engine once.
    [quick_if((t == "tcp") == (e == "native"), t, e) for t in ["tcp", "udp"] for e in ENGINES],
)
def test_dual_stack_serves_both_families(cwd: Path, engine: str, transport: str) -> None:
    ipv6_loopback()
    udp = ["--udp"] if transport == "udp" else []
    server, port = serve(cwd, "--engine", engine, "--host", "::", *udp)
    try:
        assert server.seen[0].startswith(f"pyecho: serving {'UDP ' * bool(udp)}on [::]:{port} ")
        for host in (LOOPBACK, "::1"):
            stdin = b"from " + host.encode() + (b"\n" if udp else b" exit\n")
            result = run_client(cwd, port, stdin, "--host", host, "--engine", engine, *udp)
            assert result.returncode == 0, result.stderr
            assert result.stdout == (stdin if udp else b"from\n" + host.encode() + b"\n")
        if not udp:  # the IPv4 client arrives as an IPv4-mapped IPv6 address
            server.expect(r"^INFO :: Connect with client \[::ffff:127\.0\.0\.1\]:\d+$")
            server.expect(r"^INFO :: Connect with client \[::1\]:\d+$")
    finally:
        server.kill()


@pytest.mark.parametrize("command", ["serve", "client"])
def test_a_scoped_ipv6_host_passes_through(cwd: Path, command: str) -> None:
    """fe80::1%lo reaches the socket calls as given (Linux refuses a
    link-local address on lo) and every message shows it in brackets."""
    ipv6_loopback()
    args = ["--udp", "--timeout", "0.2"] if command == "client" else []
    result = subprocess.run(
        [*PYECHO, command, "--host", "fe80::1%lo", "--port", "9", *args],
        cwd=cwd,
        input=b"x\n",
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "[fe80::1%lo]:9" in one_line_error(result)


def test_serve_says_which_engine_auto_runs_and_why(cwd: Path) -> None:
    """The default engine is "auto": the banner names the engine running and,
    for the Python engine by fallback, why, in one more line."""
    env = {**os.environ, "PYECHO_ENGINE": "python"}
    server, port = serve(cwd, "--mode", "raw", env=env)
    try:
        assert server.seen[-1].endswith(f":{port} (raw mode, python engine); press Ctrl+C to stop")
        server.expect(r"^pyecho: the Python engine runs because PYECHO_ENGINE=python$")
        out = run_client(cwd, port, b"auto\n", "--mode", "raw")
        assert (out.returncode, out.stdout) == (0, b"auto\n"), out.stderr
    finally:
        server.kill()
