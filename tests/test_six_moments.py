"""The six moments at which the design notes close a socket, end to end
through the command line: real processes, real signals, a pseudo-terminal
for the client (a person types into it), every server x client engine pair
(the quick tier: the pairs of one engine).

Client socket: 1. Ctrl+C  2. `exit`  3. the server closed.
Server socket: 4. Ctrl+C.
Server's client socket: 5. the client closed  6. the client sent `exit`.

"Really closed" is checked from the other side: the peer sees EOF (an
orderly close, not a reset), and the server process holds no descriptor for
the connection afterwards.
"""

from __future__ import annotations

import os
import pty
import socket
from pathlib import Path

import pytest

from conftest import ENGINES, LOOPBACK, quick_if, wait_for
from procs import PYECHO, Proc, serve

# Every (server, client) pair; the quick tier runs the two of one engine.
PAIRS = [quick_if(s == c, (s, c), id=f"{s}-{c}") for s in ENGINES for c in ENGINES]


class TerminalClient:
    """`pyecho client` with a pseudo-terminal as its keyboard."""

    def __init__(self, cwd: Path, port: int, engine: str) -> None:
        self.master, slave = pty.openpty()
        self.proc = Proc(
            [*PYECHO, "client", "--port", str(port), "--engine", engine], cwd, stdin=slave
        )
        os.close(slave)

    def type(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> None:
        self.proc.kill()
        os.close(self.master)


@pytest.fixture
def session(tmp_path: Path, request: pytest.FixtureRequest):
    """A served port, a terminal client connected to it, and the server's
    descriptor count from before the client came."""
    server_engine, client_engine = request.param
    server, port = serve(tmp_path, "--engine", server_engine)
    baseline = server.fds()
    client = TerminalClient(tmp_path, port, client_engine)
    try:
        server.expect(r"Connect with client 127\.0\.0\.1:\d+")
        wait_for(lambda: any("connected to" in line for line in client.proc.stderr_lines), 10)
        client.type("hello\n")
        client.proc.expect("^hello$")
        yield server, client, baseline, port
    finally:
        client.close()
        server.kill()


def server_released_connection(server: Proc, baseline: int) -> None:
    wait_for(lambda: server.fds() == baseline, 10, "the server to close the client socket")


@pytest.mark.parametrize("session", PAIRS, indirect=True)
def test_1_client_ctrl_c(session) -> None:
    server, client, baseline, _ = session
    client.proc.signal()  # Ctrl+C
    assert client.proc.wait(10) == 0
    assert client.proc.rest() == ["", "You typed Ctrl + C", "Bye"]
    # The server saw an orderly EOF, not a reset, and let go of the socket.
    server.expect(r"^INFO :: Disconnect with client\.\.\. BYE")
    server_released_connection(server, baseline)


@pytest.mark.parametrize("session", PAIRS, indirect=True)
def test_2_client_exit_word(session) -> None:
    server, client, baseline, _ = session
    client.type("exit\n")
    assert client.proc.wait(10) == 0
    assert client.proc.rest() == []  # no echo for the quit word
    server.expect(r"^INFO :: Client want close\.\.\. BYE")
    server_released_connection(server, baseline)


@pytest.mark.parametrize("session", PAIRS, indirect=True)
def test_3_client_when_the_server_closes(session) -> None:
    server, client, _, _ = session
    server.signal()  # the server goes away while the client waits for typing
    assert server.wait(10) == 0
    client.proc.expect(r"^INFO :: Server Disconnected$")
    assert client.proc.wait(10) == 1


@pytest.mark.parametrize("session", PAIRS, indirect=True)
def test_4_server_ctrl_c(session) -> None:
    server, client, _, port = session
    server.signal()
    assert server.wait(10) == 0
    assert server.rest()[:3] == ["", "You typed Ctrl + C", "Bye"]
    client.proc.expect(r"^INFO :: Server Disconnected$")  # its connection got EOF
    with pytest.raises(ConnectionRefusedError):  # the listening socket is closed
        socket.create_connection((LOOPBACK, port), timeout=10)


@pytest.mark.parametrize("session", PAIRS, indirect=True)
def test_5_server_side_when_the_client_closes(session) -> None:
    server, client, baseline, _ = session
    os.write(client.master, b"\x04")  # Ctrl+D: end of input, the client closes
    assert client.proc.wait(10) == 0
    server.expect(r"^INFO :: Disconnect with client\.\.\. BYE \(127\.0\.0\.1:\d+\)$")
    server_released_connection(server, baseline)


@pytest.mark.slow  # ~2 s each
@pytest.mark.parametrize("session", PAIRS, indirect=True)
def test_6_server_side_on_the_exit_word(session) -> None:
    server, client, baseline, port = session
    # A second client, so we can also watch the server's side of the socket.
    with socket.create_connection((LOOPBACK, port), timeout=10) as raw:
        server.expect(r"Connect with client")
        raw.sendall(b"exit")
        assert raw.recv(10) == b""  # EOF: the server closed its socket, no reply
        server.expect(r"^INFO :: Client want close\.\.\. BYE")
    # The terminal client is unaffected and still echoes.
    client.type("still\n")
    client.proc.expect("^still$")
    client.type("exit\n")
    assert client.proc.wait(10) == 0
    server.expect(r"^INFO :: Client want close\.\.\. BYE")
    server_released_connection(server, baseline)
