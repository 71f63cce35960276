"""The original server.c and client.c, compiled unmodified from the design
notes, working with pyecho in both directions, with either engine.

The originals hard-code 127.0.0.1:12345, so these tests use that port and
must not run in parallel with each other (pytest runs them one by one).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from conftest import ENGINES
from procs import PYECHO, Proc, serve

SEED = Path(
    os.environ.get("PYECHO_SEED_DIR", Path(__file__).resolve().parents[2] / "shared" / "seed")
)
PORT = 12345


def _compile(name: str, out_dir: Path) -> Path:
    source = SEED / f"{name}.c"
    if not source.exists():
        pytest.skip(f"the original {name}.c is not here ({source}); set PYECHO_SEED_DIR")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler to build the originals")
    binary = out_dir / f"original-{name}"
    # Unmodified; -w because the originals ignore return values and the like.
    subprocess.run([cc, "-w", "-o", str(binary), str(source)], check=True, timeout=120)
    return binary


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("originals")
    return {name: _compile(name, out) for name in ("server", "client")}


def _wait_port(listening: bool) -> None:
    """Wait (bounded) until something listens on 12345, or nothing does."""
    deadline = time.monotonic() + 10
    while True:
        with socket.socket() as s:
            if (s.connect_ex(("127.0.0.1", PORT)) == 0) == listening:
                return
        if time.monotonic() > deadline:
            state = "nothing listens" if listening else "another program still listens"
            raise AssertionError(f"{state} on port {PORT}")
        time.sleep(0.02)


def _line_buffered(argv: list[str]) -> list[str]:
    # The originals printf to a pipe: make stdio flush each line so we can
    # read their log as it happens (stdbuf is coreutils).
    return ["stdbuf", "-oL", *argv] if shutil.which("stdbuf") else argv


@pytest.mark.parametrize("engine", ENGINES)
def test_original_client_against_pyecho_serve(
    originals: dict[str, Path], tmp_path: Path, engine: str
) -> None:
    _wait_port(listening=False)
    server, port = serve(tmp_path, "--engine", engine, port=PORT)
    try:
        assert port == PORT
        result = subprocess.run(
            [str(originals["client"])],
            input=b"hello world\nsecond exit\n",
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"hello\nworld\nsecond\n"
        server.expect(r"Connect with client 127\.0\.0\.1:\d+")
        server.expect(r"^INFO :: Client want close\.\.\. BYE \(127\.0\.0\.1:\d+\)$")
    finally:
        server.signal()
        assert server.wait(10) == 0


@pytest.mark.parametrize("engine", ENGINES)
def test_pyecho_client_against_original_server(
    originals: dict[str, Path], tmp_path: Path, engine: str
) -> None:
    _wait_port(listening=False)
    server = Proc(_line_buffered([str(originals["server"])]), tmp_path)
    try:
        _wait_port(listening=True)
        result = subprocess.run(
            [*PYECHO, "client", "--engine", engine],
            cwd=tmp_path,
            input=b"a b\nexit\n",
            capture_output=True,
            timeout=30,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"a\nb\n"
        server.expect(r"^INFO :: Client want close\.\.\. BYE$")
    finally:
        server.signal()
        server.wait(10)
    assert server.rest()[:2] == ["", "You typed Ctrl + C"]


@pytest.mark.parametrize("engine", ENGINES)
def test_pyecho_client_sees_the_original_server_go_away(
    originals: dict[str, Path], tmp_path: Path, engine: str
) -> None:
    _wait_port(listening=False)
    server = Proc(_line_buffered([str(originals["server"])]), tmp_path)
    client = None
    try:
        _wait_port(listening=True)
        client = Proc([*PYECHO, "client", "--engine", engine], tmp_path, stdin=subprocess.PIPE)
        client.popen.stdin.write(b"ping\n")
        client.popen.stdin.flush()
        assert client.expect("^ping$").group(0) == "ping"
        server.signal()  # the original's Ctrl+C closes our connection
        assert client.expect(r"^INFO :: Server Disconnected$")
        assert client.wait(10) == 1
    finally:
        server.kill()
        if client is not None:
            client.kill()
