"""What the client checks about the server and how it sends, on both engines:
bytes beyond the expected echo (docs/PROTOCOL.md: OSError(EPROTO)), seed
mode's one-message-per-read rule for long data."""

from __future__ import annotations

import errno
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import pyecho
from conftest import LOOPBACK

# mode: (message sent, what a pyecho server echoes for it)
MESSAGES = {
    "raw": (b"hello", b"hello"),
    "line": (b"hello\n", b"hello\n"),
    "seed": (b"hello\n", b"hello"),
}


@contextmanager
def talkative_server(banner: bytes, reply: bytes, expect: int) -> Iterator[tuple[str, int]]:
    """A server that sends ``banner`` on connecting, reads ``expect`` bytes,
    then sends ``reply`` in one piece, and waits for the client to leave."""
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen()

    def serve() -> None:
        peer, _ = listener.accept()
        with peer:
            peer.settimeout(10)
            try:
                if banner:
                    peer.sendall(banner)
                got = b""
                while len(got) < expect:
                    chunk = peer.recv(expect - len(got))
                    if not chunk:
                        return
                    got += chunk
                peer.sendall(reply)
                while peer.recv(4096):
                    pass
            except (ConnectionResetError, BrokenPipeError):
                pass  # the client saw the extra bytes and left, unread ones reset it

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        yield listener.getsockname()
    finally:
        thread.join(timeout=10)
        listener.close()


@pytest.mark.parametrize("mode", MESSAGES)
@pytest.mark.parametrize("extra", ["banner", "trailer"])
def test_bytes_beyond_the_echo_are_a_protocol_error(engine: str, mode: str, extra: str) -> None:
    """Defect 2: a server that sends a banner or a trailer does not speak the
    protocol. Once the whole expected echo is in, bytes already waiting
    beyond it raise OSError(EPROTO) rather than becoming the next echo."""
    message, echo = MESSAGES[mode]
    banner = b"WELCOME\n" if extra == "banner" else b""
    reply = echo + (b"!!" if extra == "trailer" else b"")
    with talkative_server(banner, reply, len(message)) as address:
        with pyecho.EchoClient(address, engine=engine, mode=mode, timeout=10) as c:
            with pytest.raises(OSError) as exc:
                c.echo(message)
            assert exc.value.errno == errno.EPROTO


@pytest.mark.parametrize("mode", MESSAGES)
def test_an_exact_echo_is_no_protocol_error(engine: str, mode: str) -> None:
    """The same server without extra bytes: the check finds nothing."""
    message, echo = MESSAGES[mode]
    with talkative_server(b"", echo, len(message)) as address:
        with pyecho.EchoClient(address, engine=engine, mode=mode, timeout=10) as c:
            assert c.echo(message) == echo
            assert not c.server_closed


def test_seed_send_of_more_than_bufsize_is_refused(engine: str) -> None:
    """Defect 4: in seed mode one message is one read of at most bufsize
    bytes, so send() cannot say where longer data is cut; echo() can."""
    with pyecho.EchoServer((LOOPBACK, 0), engine=engine).start() as server:
        with pyecho.EchoClient(server.server_address, engine=engine, timeout=10) as c:
            with pytest.raises(ValueError, match="bufsize"):
                c.send(b"x" * 100)
            c.send(b"y" * 99)  # refused before anything was sent: still usable
            assert c.echo(b"") == b"y" * 99
