"""The protocol, scenario by scenario, over the engine matrix.

Each test runs its scenario with {native, python} server x {native, python}
client (tests/differential.py) and asserts both that the four transcripts are
identical and that they say what docs/PROTOCOL.md promises.
"""

from __future__ import annotations

import random
import socket
import struct
import threading

import pytest

from conftest import HOSTS, quick_if, wait_for
from differential import run_matrix

pytestmark = pytest.mark.native  # the matrix runs the C core as server and client

MODES = ["raw", "line", "seed"]


def closes(stats: dict) -> dict:
    return {k: v for k, v in stats["closed"].items() if v}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize(
    "mode, messages, replies",
    [
        ("raw", [b"a", b"", b"hello world", b"exit"], [b"a", b"", b"hello world", b"exit"]),
        (
            "line",
            [b"a\n", b"\n", b"hello\r\n", b"exit now\n"],
            [b"a\n", b"\n", b"hello\r\n", b"exit now\n"],
        ),
        ("seed", [b"a", b"hello\n", b"exit now"], [b"a", b"hello", b"exit now"]),
    ],
)
def test_short_and_empty_messages(host: str, mode: str, messages: list, replies: list) -> None:
    def scenario(server, client):
        with client() as c:
            return [c.echo(m) for m in messages]

    result = run_matrix(scenario, host=host, mode=mode)
    assert result["transcript"] == replies
    assert result["events"] == [("open", 1, host, None), ("close", 1, host, "peer")]
    sent = sum(map(len, messages))
    assert result["stats"]["bytes_in"] == sent
    assert result["stats"]["bytes_out"] == sum(map(len, replies))
    assert closes(result["stats"]) == {"peer": 1}


@pytest.mark.parametrize(
    "mode, message, reply",
    [
        ("raw", bytes(range(256)) * 4, bytes(range(256)) * 4),
        ("line", b"\x00a\x00\xff\r\x00\n", b"\x00a\x00\xff\r\x00\n"),
        # The original's strlen() would have cut this at the first NUL.
        ("seed", b"a\x00b\x00\n", b"a\x00b\x00"),
        ("seed", b"\x00exit", b"\x00exit"),
    ],
)
def test_binary_with_nul_bytes(mode: str, message: bytes, reply: bytes) -> None:
    def scenario(server, client):
        with client() as c:
            return c.echo(message)

    assert run_matrix(scenario, mode=mode)["transcript"] == reply


def test_one_mebibyte_raw() -> None:
    data = random.Random(1).randbytes(1 << 20)

    def scenario(server, client):
        with client() as c:
            return c.echo(data) == data

    result = run_matrix(scenario, mode="raw")
    assert result["transcript"] is True
    assert result["stats"]["bytes_in"] == result["stats"]["bytes_out"] == 1 << 20


# Each mode's framing is checked quick elsewhere: fifty clients in line mode.
@pytest.mark.parametrize("mode", [quick_if(m == "line", m) for m in MODES])
def test_fifty_concurrent_clients(mode: str) -> None:
    end = b"\n" if mode == "line" else b""

    def scenario(server, client):
        results: list = [None] * 50
        clients = [client() for _ in range(50)]  # all connected at once
        barrier = threading.Barrier(50)

        def talk(i: int) -> None:
            with clients[i] as c:
                barrier.wait(timeout=20)
                results[i] = [c.echo(b"client %d message %d" % (i, j) + end) for j in range(20)]

        threads = [threading.Thread(target=talk, args=(i,)) for i in range(50)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        return results

    result = run_matrix(scenario, mode=mode, ordered_events=False)
    expected = [[b"client %d message %d" % (i, j) + end for j in range(20)] for i in range(50)]
    assert result["transcript"] == expected
    assert result["stats"]["accepted"] == 50
    assert closes(result["stats"]) == {"peer": 50}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize(
    "mode, quit_word, before, quit_message, echoed_before",
    [
        ("seed", b"exit", b"hi", b"exit", b"hi"),
        ("seed", b"exit", b"hi\n", b"exit\n", b"hi"),
        ("seed", "bye", b"exit", b"bye", b"exit"),
        ("line", b"exit", b"hi\n", b"exit\n", b"hi\n"),
        ("line", b"exit", b"hi\n", b"exit\r\n", b"hi\n"),
        # What came before the quit line in the same packet is still echoed.
        ("line", b"exit", b"", b"a\nb\nexit\nignored\n", b"a\nb\n"),
    ],
)
def test_quit_word(host, mode, quit_word, before, quit_message, echoed_before) -> None:
    def scenario(server, client):
        with client() as c:
            first = c.echo(before) if before else b""
            last = c.echo(quit_message)
            return first + last, c.server_closed, c.recv()

    result = run_matrix(scenario, host=host, mode=mode, quit_word=quit_word)
    assert result["transcript"] == (echoed_before, True, b"")
    assert result["events"][-1] == ("close", 1, host, "quit")
    assert closes(result["stats"]) == {"quit": 1}


@pytest.mark.parametrize("mode", ["seed", "line"])
def test_quit_word_only_as_a_whole_message(mode: str) -> None:
    end = b"\n" if mode == "line" else b""
    messages = [b"exi" + end, b"exits" + end, b"EXIT" + end, b" exit" + end]

    def scenario(server, client):
        with client() as c:
            return [c.echo(m) for m in messages], c.server_closed

    replies, closed = run_matrix(scenario, mode=mode)["transcript"]
    assert replies == [m.rstrip(b"\n") if mode == "seed" else m for m in messages]
    assert closed is False


def test_raw_mode_has_no_quit_word() -> None:
    def scenario(server, client):
        with client() as c:
            return c.echo(b"exit"), c.echo(b"exit\n"), c.server_closed

    assert run_matrix(scenario, mode="raw")["transcript"] == (b"exit", b"exit\n", False)


def test_long_lines_are_echoed_in_max_line_pieces() -> None:
    lines = [b"abcdefghij\n", b"exitexitexit\n", b"xxxxxxxx" + b"exit\n", b"1234567\n", b"exit\n"]

    def scenario(server, client):
        with client() as c:
            out = [c.echo(line) for line in lines]
            return out, c.server_closed

    result = run_matrix(scenario, mode="line", max_line=8)
    replies, closed = result["transcript"]
    # Nothing is lost; the tail of a long line is never the quit word.
    assert replies == lines[:4] + [b""]
    assert closed is True
    assert closes(result["stats"]) == {"quit": 1}


def test_line_split_across_sends_is_echoed_once_complete() -> None:
    def scenario(server, client):
        with client() as c:
            c.send(b"hel")
            c.send(b"lo wor")
            return c.echo(b"ld\nnext")  # the echo of the whole first line

    assert run_matrix(scenario, mode="line")["transcript"] == b"hello world\n"


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("mode", MODES)
def test_peer_close(host: str, mode: str) -> None:
    def scenario(server, client):
        c = client()
        reply = c.echo(b"one\n")
        c.close()
        return reply

    result = run_matrix(scenario, host=host, mode=mode)
    assert result["transcript"] == (b"one" if mode == "seed" else b"one\n")
    assert closes(result["stats"]) == {"peer": 1}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize(
    "mode, data, echoed",
    [
        ("raw", bytes(range(256)) * 1024, bytes(range(256)) * 1024),  # 256 KiB
        ("line", b"first\nsecond\npartial", b"first\nsecond\npartial"),
        ("seed", b"hello", b"hello"),
    ],
)
def test_half_close_echoes_everything_pending(
    host: str, mode: str, data: bytes, echoed: bytes
) -> None:
    def scenario(server, client):
        with client() as c:
            c.send(data)
            c.shutdown_write()
            received = b""
            while chunk := c.recv(65536):
                received += chunk
            return received

    result = run_matrix(scenario, host=host, mode=mode)
    assert result["transcript"] == echoed
    assert closes(result["stats"]) == {"peer": 1}


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("mode", MODES)
def test_abrupt_reset(host: str, mode: str) -> None:
    def scenario(server, client):
        c = client()
        c.echo(b"before reset\n")
        # SO_LINGER with a zero timeout turns close() into a RST.
        s = socket.socket(fileno=c.fileno())
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.detach()
        c.close()
        return None

    result = run_matrix(scenario, host=host, mode=mode)
    assert closes(result["stats"]) == {"reset": 1}
    assert result["events"][-1] == ("close", 1, host, "reset")


@pytest.mark.parametrize("host", HOSTS)
@pytest.mark.parametrize("mode", MODES)
def test_shutdown_with_clients_still_connected(host: str, mode: str) -> None:
    def scenario(server, client):
        clients = [client() for _ in range(3)]
        for c in clients:
            c.echo(b"hi\n")
        server.shutdown()
        eofs = [c.recv() for c in clients]
        for c in clients:
            c.close()
        return eofs

    result = run_matrix(scenario, host=host, mode=mode, ordered_events=False)
    assert result["transcript"] == [b"", b"", b""]
    assert closes(result["stats"]) == {"shutdown": 3}
    assert result["events"] == [(("close", host, "shutdown"), 3), (("open", host, None), 3)]


def test_half_close_makes_a_partial_line_owed() -> None:
    def scenario(server, client):
        with client() as c:
            c.send(b"whole\npartial")
            c.shutdown_write()  # the server echoes the partial line at EOF
            return c.echo(b""), c.recv()

    assert run_matrix(scenario, mode="line")["transcript"] == (b"whole\npartial", b"")


@pytest.mark.parametrize("engine", ["native", "python"])
def test_echo_before_the_quit_word_survives_input_after_it(engine: str) -> None:
    """The server stops reading at the quit word; closing with the client's
    later bytes unread would send a reset that destroys echo still in flight
    to a slow reader. It lingers instead: every byte before the quit arrives."""
    import time

    import pyecho

    lines = b"".join(b"line %07d ................................\n" % i for i in range(60_000))
    with pyecho.EchoServer(("127.0.0.1", 0), engine=engine, mode="line").start() as server:
        with socket.create_connection(server.server_address, timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            got = bytearray()
            errors: list[OSError] = []

            def slow_reader() -> None:
                try:
                    while chunk := s.recv(16384):
                        got.extend(chunk)
                        time.sleep(0.001)
                except OSError as e:
                    errors.append(e)

            reader = threading.Thread(target=slow_reader)
            reader.start()
            s.sendall(lines + b"exit\n" + b"more after the quit word\n" * 8000)
            reader.join(timeout=60)
        assert errors == []
        assert len(got) == len(lines) and bytes(got) == lines
        wait_for(lambda: server.stats.closed["quit"] == 1, 10, "the quit close")
        assert server.stats.closed["reset"] == 0


def test_half_close_after_the_quit_word_owes_nothing_more() -> None:
    def scenario(server, client):
        with client() as c:
            c.send(b"abc")
            c.send(b"\nexit\n")  # "abc\n" is echoed, then the quit
            c.shutdown_write()
            return c.echo(b""), c.server_closed

    assert run_matrix(scenario, mode="line")["transcript"] == (b"abc\n", True)


def _seed_pieces(data: bytes, bufsize: int, quit_word: bytes = b"exit") -> bytes:
    """What echo() returns in seed mode: each bufsize piece is one message
    (one trailing newline dropped); a quit piece ends it."""
    out = b""
    for start in range(0, len(data), bufsize):
        msg = data[start : start + bufsize]
        msg = msg[:-1] if msg.endswith(b"\n") else msg
        if msg == quit_word:
            break
        out += msg
    return out


@pytest.mark.slow
def test_seed_echo_longer_than_bufsize_goes_in_pieces() -> None:
    """Defect 4: in seed mode echo() of more than bufsize bytes sends it in
    pieces of bufsize, each once the echo of the one before is in, so each
    is one read of the server (newlines anywhere; 300 KB used to fail)."""
    rng = random.Random(4)
    data = b"".join(
        bytes(rng.choice(b"abc \n") for _ in range(rng.randrange(1, 200))) for _ in range(3000)
    )

    def scenario(server, client):
        with client() as c:
            return c.echo(data), c.echo(b"after\n"), c.server_closed

    assert len(data) > 290_000
    reply, after, closed = run_matrix(scenario, mode="seed")["transcript"]
    assert reply == _seed_pieces(data, 99)
    assert (after, closed) == (b"after", False)


@pytest.mark.parametrize(
    "data",
    [b"abcdexitefgh", b"abcdexit", b"abcdexitexit", b"abc\nexit"],
    ids=["middle", "last", "twice", "after-a-newline"],
)
def test_seed_echo_stops_at_a_quit_piece(data: bytes) -> None:
    """A piece that is the quit word ends the call: nothing after it is
    sent, and echo() returns what came before once the server closed."""

    def scenario(server, client):
        with client() as c:
            return c.echo(data), c.server_closed

    result = run_matrix(scenario, mode="seed", bufsize=4)
    assert result["transcript"] == (_seed_pieces(data, 4), True)
    assert result["stats"]["bytes_in"] == 8 and closes(result["stats"]) == {"quit": 1}
