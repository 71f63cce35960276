"""The original server.c and client.c, compiled unmodified from the design
notes, working with pyecho in both directions, with either engine.

The originals hard-code 127.0.0.1:12345. So that they never collide with a
running `pyecho serve` or with another test run, each test runs its
processes (the original and pyecho alike) in a private network namespace of
its own (`unshare --net`, then `nsenter`; root or CAP_SYS_ADMIN). Where no
namespace can be made, the tests use the machine's port 12345 if it is free
and skip, saying so, if it is not.

The originals are the two C programs of the study notes on sockets that
pyecho grew from; PYECHO_SEED_DIR names the folder that holds them (default:
../shared/seed beside this repository), see README.md.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import Netns

from conftest import ENGINES
from procs import PYECHO, Proc

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


class Net(Netns):
    """Where a test's processes run: a private network namespace or, without
    one, the machine's own network."""

    def wrap(self, argv: list[str]) -> list[str]:
        """argv run inside the namespace (nsenter execs it: same pid, same signals)."""
        if self.holder is None:
            return argv
        return ["nsenter", f"--net=/proc/{self.holder.pid}/ns/net", "--", *argv]

    def listening(self, port: int) -> bool:
        """Whether a TCP socket listens on ``port`` in this network, from the
        kernel's table (the test process itself is outside the namespace)."""
        pid = self.holder.pid if self.holder is not None else "self"
        for table in ("tcp", "tcp6"):
            try:
                lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
            except FileNotFoundError:  # no IPv6
                continue
            for line in lines:
                local, state = line.split()[1], line.split()[3]
                if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:  # LISTEN
                    return True
        return False

    def wait_port(self, listening: bool) -> None:
        """Wait (bounded) until something listens on 12345, or nothing does."""
        deadline = time.monotonic() + 10
        while self.listening(PORT) != listening:
            if time.monotonic() > deadline:
                state = "nothing listens" if listening else "another program still listens"
                raise AssertionError(f"{state} on port {PORT}")
            time.sleep(0.02)


@pytest.fixture
def net() -> Iterator[Net]:
    n = Net()
    try:
        if n.holder is None and n.listening(PORT):
            pytest.skip(
                f"port {PORT}, which the originals hard-code, is in use here (a running "
                f"`pyecho serve`?) and there is no private network namespace to run them "
                f"in ({n.why_not})"
            )
        yield n
    finally:
        n.close()


def _serve(net: Net, cwd: Path, engine: str) -> tuple[Proc, int]:
    """`pyecho serve` on 12345 in ``net``; the process and the port it reports."""
    server = Proc(net.wrap([*PYECHO, "serve", "--port", str(PORT), "--engine", engine]), cwd)
    return server, int(server.expect(r"serving on 127\.0\.0\.1:(\d+)").group(1))


def _line_buffered(argv: list[str]) -> list[str]:
    # The originals printf to a pipe: make stdio flush each line so we can
    # read their log as it happens (stdbuf is coreutils).
    return ["stdbuf", "-oL", *argv] if shutil.which("stdbuf") else argv


@pytest.mark.parametrize("engine", ENGINES)
def test_original_client_against_pyecho_serve(
    originals: dict[str, Path], net: Net, tmp_path: Path, engine: str
) -> None:
    net.wait_port(listening=False)
    server, port = _serve(net, tmp_path, engine)
    try:
        assert port == PORT
        result = subprocess.run(
            net.wrap([str(originals["client"])]),
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
    originals: dict[str, Path], net: Net, tmp_path: Path, engine: str
) -> None:
    net.wait_port(listening=False)
    server = Proc(net.wrap(_line_buffered([str(originals["server"])])), tmp_path)
    try:
        net.wait_port(listening=True)
        result = subprocess.run(
            net.wrap([*PYECHO, "client", "--engine", engine]),
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
    originals: dict[str, Path], net: Net, tmp_path: Path, engine: str
) -> None:
    net.wait_port(listening=False)
    server = Proc(net.wrap(_line_buffered([str(originals["server"])])), tmp_path)
    client = None
    try:
        net.wait_port(listening=True)
        client = Proc(
            net.wrap([*PYECHO, "client", "--engine", engine]), tmp_path, stdin=subprocess.PIPE
        )
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
