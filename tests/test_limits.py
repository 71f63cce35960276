"""The limits that protect a server, over the engine matrix: max_clients,
idle_timeout, and the documented defaults (docs/PROTOCOL.md,
docs/SECURITY.md)."""

from __future__ import annotations

import inspect
import socket
import time

import pytest
from procserver import ProcServer
from streams import MIB, Pattern, Pump

import pyecho
from conftest import HOSTS, LOOPBACK, wait_for
from differential import run_matrix

pytestmark = pytest.mark.native


@pytest.mark.parametrize("host", HOSTS)
def test_max_clients_rejects_new_connections_only(host: str) -> None:
    """Past max_clients a new connection is closed at once and counted; the
    open ones keep working; a freed slot is usable again."""

    def scenario(server, client):
        held = [client() for _ in range(3)]
        replies = [c.echo(b"held %d\n" % i) for i, c in enumerate(held)]
        wait_for(lambda: server.stats.open == 3, 10)
        refused = []
        for _ in range(2):
            with client() as extra:  # connects (the kernel accepts), then is closed
                refused.append(extra.recv())
        wait_for(lambda: server.stats.rejected == 2, 10)
        replies += [c.echo(b"still here %d\n" % i) for i, c in enumerate(held)]
        held[0].close()
        wait_for(lambda: server.stats.open == 2, 10)
        with client() as again:
            replies.append(again.echo(b"a free slot\n"))
        # One close at a time: closes seen in one turn of the loop come in
        # the poller's order, which is not the same on every backend.
        wait_for(lambda: server.stats.open == 2, 10)
        for i, c in enumerate(held[1:]):
            c.close()
            wait_for(lambda i=i: server.stats.open == 1 - i, 10)
        return replies, refused

    result = run_matrix(scenario, host=host, mode="line", max_clients=3)
    replies, refused = result["transcript"]
    assert replies == [
        b"held 0\n",
        b"held 1\n",
        b"held 2\n",
        b"still here 0\n",
        b"still here 1\n",
        b"still here 2\n",
        b"a free slot\n",
    ]
    assert refused == [b"", b""]
    stats = result["stats"]
    assert stats["rejected"] == 2 and stats["accepted"] == 4
    assert stats["closed"]["peer"] == 4
    # Rejected connections produce no events: only the four served ones do.
    assert [e[0] for e in result["events"]].count("open") == 4
    assert {e[2] for e in result["events"]} == {host}


@pytest.mark.parametrize("host", HOSTS)
def test_lingering_connections_count_toward_max_clients(host: str) -> None:
    """Defect 3: a client that sent the quit word and keeps its socket open
    lingers (up to 2 s) and holds a descriptor, so it counts toward
    max_clients. A new connection at the limit closes the oldest lingering
    one (reason "quit") to make room; only with none lingering is it
    rejected."""

    def scenario(server, client):
        quitters = [client() for _ in range(2)]
        replies = [q.echo(b"bye %d\nexit\n" % i) for i, q in enumerate(quitters)]
        wait_for(lambda: server.stats.open == 2, 10)
        served = []
        counts = []
        for i in range(2):  # each takes the place of the oldest lingering one
            served.append(client())
            replies.append(served[-1].echo(b"served %d\n" % i))
            counts.append((server.stats.open, server.stats.closed["quit"]))
        with client() as extra:  # none lingering: rejected
            refused = extra.recv()
        wait_for(lambda: server.stats.rejected == 1, 10)
        replies += [c.echo(b"still %d\n" % i) for i, c in enumerate(served)]
        for i, c in enumerate(served):  # one at a time: two closes would race
            c.close()
            wait_for(lambda i=i: server.stats.closed["peer"] == i + 1, 10)
        for c in quitters:
            c.close()
        return replies, counts, refused

    result = run_matrix(scenario, host=host, mode="line", max_clients=2)
    replies, counts, refused = result["transcript"]
    assert replies == [b"bye 0\n", b"bye 1\n", b"served 0\n", b"served 1\n", b"still 0\n"] + [
        b"still 1\n"
    ]
    assert counts == [(2, 1), (2, 2)] and refused == b""
    assert {e[2] for e in result["events"]} == {host}
    assert [e[:2] + e[3:] for e in result["events"]] == [
        ("open", 1, None),
        ("open", 2, None),
        ("close", 1, "quit"),
        ("open", 3, None),
        ("close", 2, "quit"),
        ("open", 4, None),
        ("close", 3, "peer"),
        ("close", 4, "peer"),
    ]
    stats = result["stats"]
    assert (stats["accepted"], stats["rejected"]) == (4, 1)


def test_max_clients_bounds_the_descriptors_held(engine: str) -> None:
    """Defect 3: clients that send the quit word and hold their sockets open
    cannot make the server hold more than max_clients descriptors for them
    (they used to pass at thousands per second)."""
    limit, total = 10, 300
    with ProcServer(engine, mode="line", max_clients=limit) as server:
        base = server.fds()
        held = []
        try:
            for i in range(total):
                s = socket.create_connection(server.address, timeout=10)
                s.sendall(b"exit\n")
                held.append(s)
                if i % 50 == 49:
                    assert server.fds() <= base + limit + 1  # + 1 while accepting
            wait_for(
                lambda: (st := server.stats())["accepted"] + st["rejected"] == total,
                15,
                "every connection to be accepted or rejected",
            )
            stats = server.stats()
            assert stats["open"] <= limit and server.fds() <= base + limit
            assert stats["closed"]["quit"] == stats["accepted"] - stats["open"]
        finally:
            for s in held:
                s.close()
        wait_for(lambda: server.stats()["open"] == 0, 10)
        server.quit()


@pytest.mark.slow
def test_idle_timeout_closes_silent_connections_only() -> None:
    """A connection silent for idle_timeout is closed (reason "idle"), whether
    it talked before or never did; one that keeps talking is not."""
    idle = 0.5

    def scenario(server, client):
        talked, silent = client(), client()
        start = time.monotonic()  # both were last active after this
        talked.echo(b"once\n")
        eofs = [talked.recv(), silent.recv()]  # both closed by the server
        waited = time.monotonic() - start
        talked.close()
        silent.close()
        with client() as busy:  # active for 4 x idle_timeout: never idle
            # A fixed number of echoes (the stats compared across engines
            # count their bytes), paced to last at least 4 x idle_timeout.
            began = time.monotonic()
            for _ in range(round(4 * idle / 0.05)):
                assert busy.echo(b"tick\n") == b"tick\n"
                time.sleep(0.05)  # pacing the client: gaps far below idle_timeout
            lasted = time.monotonic() - began >= 4 * idle
            alive = not busy.server_closed
        return eofs, waited >= idle * 0.9, waited < idle + 10, lasted, alive

    result = run_matrix(scenario, mode="line", idle_timeout=idle)
    assert result["transcript"] == ([b"", b""], True, True, True, True)
    assert result["events"] == [
        ("open", 1, "127.0.0.1", None),
        ("open", 2, "127.0.0.1", None),
        # Least recently active first: 2 was silent since before 1's echo.
        ("close", 2, "127.0.0.1", "idle"),
        ("close", 1, "127.0.0.1", "idle"),
        ("open", 3, "127.0.0.1", None),
        ("close", 3, "127.0.0.1", "peer"),
    ]


def test_idle_timeout_also_ends_a_reader_that_stopped_reading(engine: str) -> None:
    """Output that cannot be sent is no activity: a client that neither sends
    nor reads is closed as idle, and its queue freed."""
    with pyecho.EchoServer((LOOPBACK, 0), engine=engine, mode="raw", idle_timeout=0.3) as server:
        server.start()
        with socket.create_connection(server.server_address) as sock:
            pump = Pump(sock, Pattern(7), 64 * MIB)
            try:  # fill every buffer, then stay silent
                pump.send_until_stalled(stall=2.0, limit=30)
            except (ConnectionResetError, BrokenPipeError):
                pass  # the server closed it while we still tried to send
            wait_for(lambda: server.stats.closed["idle"] == 1, 10, "the idle close")
            assert pump.sent < 64 * MIB
        assert server.stats.open == 0
        assert server.stats.closed == {**dict.fromkeys(pyecho.CLOSE_REASONS, 0), "idle": 1}


def test_documented_defaults() -> None:
    """The defaults docs/PROTOCOL.md and docs/SECURITY.md state."""
    params = inspect.signature(pyecho.EchoServer).parameters
    assert params["server_address"].default == ("127.0.0.1", 12345)
    defaults = {name: p.default for name, p in params.items()}
    assert defaults["max_line"] == 64 * 1024
    assert defaults["max_pending"] == 256 * 1024
    assert defaults["max_clients"] == 0  # no limit
    assert defaults["idle_timeout"] == 0  # never
    assert defaults["backlog"] == 128
    assert pyecho.DEFAULT_HOST == "127.0.0.1"
    with pyecho.EchoServer((LOOPBACK, 0)) as server:
        cfg = server.config
        assert (cfg.max_line, cfg.max_pending, cfg.max_clients, cfg.idle_timeout) == (
            64 * 1024,
            256 * 1024,
            0,
            0.0,
        )
