"""IPv6 and dual stack on both engines: what each kind of address means
(docs/PROTOCOL.md, "Addresses"), how it prints, and how odd ones fail.

Link-local addresses, a name /etc/hosts gives both families, a system whose
sockets default to IPv6 only and one with IPv6 disabled are tried in private
network namespaces: tests/test_ipv6_netns.py. The scenarios that run over
both families are in test_differential.py and test_limits.py (``HOSTS``).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

import pyecho
from conftest import LOOPBACK, LOOPBACK6, needs_ipv6, wait_for
from differential import run_matrix

pytestmark = [pytest.mark.native, needs_ipv6]

MAPPED = "::ffff:127.0.0.1"  # how a dual-stack server sees an IPv4 client
NAME = "both-families.test"  # resolved by the stub below to the hosts it is given


def served_one_by_one(server, client, hosts: list[str | None]) -> list:
    """Connect to each host in turn at the server's port (None: its address),
    echo once, close and wait for the close, so the events come in order."""
    out = []
    for i, to in enumerate(hosts, 1):
        with client(to) as c:
            out.append((c.server_address[0], c.echo(b"hi\n")))
        wait_for(lambda i=i: server.stats.closed["peer"] == i, 10, "the close")
    return out


def events_of(peers: list[str]) -> list[tuple]:
    return [
        event
        for i, peer in enumerate(peers, 1)
        for event in (("open", i, peer, None), ("close", i, peer, "peer"))
    ]


def test_dual_stack_server_serves_both_families() -> None:
    """A server on "::" takes IPv4 clients too (IPV6_V6ONLY off): both engines
    see them as IPv4-mapped IPv6 addresses, the same string."""

    def scenario(server, client):
        return server.server_address[0], served_one_by_one(
            server, client, [LOOPBACK, LOOPBACK6, None, MAPPED]
        )

    result = run_matrix(scenario, host="::", mode="line")
    hi = b"hi\n"
    # A client given "::" (the server's own address) connects to ::1.
    assert result["transcript"] == (
        "::",
        [(LOOPBACK, hi), (LOOPBACK6, hi), (LOOPBACK6, hi), (MAPPED, hi)],
    )
    assert result["events"] == events_of([MAPPED, LOOPBACK6, LOOPBACK6, MAPPED])
    assert result["stats"]["accepted"] == 4


def test_ipv4_mapped_server_address_serves_that_ipv4_address() -> None:
    def scenario(server, client):
        replies = served_one_by_one(server, client, [LOOPBACK, None])
        with pytest.raises(ConnectionRefusedError, match=r"'\[::1\]:\d+'"):
            client(LOOPBACK6)
        return server.server_address[0], replies

    result = run_matrix(scenario, host=MAPPED, mode="line")
    assert result["transcript"] == (MAPPED, [(LOOPBACK, b"hi\n"), (MAPPED, b"hi\n")])
    assert result["events"] == events_of([MAPPED, MAPPED])


@pytest.mark.parametrize("host", ["", "0.0.0.0"])
def test_every_ipv4_interface_is_ipv4_only(engine: str, host: str) -> None:
    """ "" is the original's INADDR_ANY, as "0.0.0.0": IPv4 only."""
    with pyecho.EchoServer((host, 0), engine=engine, mode="line").start() as server:
        assert server.server_address[0] == "0.0.0.0"
        port = server.server_address[1]
        for to in ("", "0.0.0.0", LOOPBACK):
            with pyecho.EchoClient((to, port), engine=engine, mode="line", timeout=10) as c:
                assert c.server_address == (LOOPBACK, port)
                assert c.echo(b"v4\n") == b"v4\n"
        with pytest.raises(ConnectionRefusedError):
            pyecho.EchoClient((LOOPBACK6, port), engine=engine, timeout=10)


@pytest.mark.parametrize(
    "server_host, client_host, reached",
    [
        ("::1", "::", "::1"),
        ("::", "::", "::1"),
        ("::1", "::%1", "::1"),
        (LOOPBACK, "0.0.0.0", LOOPBACK),
    ],
)
def test_a_client_given_the_unspecified_address_connects_to_loopback(
    engine: str, server_host: str, client_host: str, reached: str
) -> None:
    """Linux connects to loopback when told "::" or "0.0.0.0"; pyecho does so
    itself, so that every engine and system agrees and messages name the
    address really used."""
    events: list[pyecho.Event] = []
    with pyecho.EchoServer((server_host, 0), engine=engine, on_event=events.append) as server:
        server.start()
        port = server.server_address[1]
        with pyecho.EchoClient((client_host, port), engine=engine, mode="raw") as c:
            assert c.server_address == (reached, port)
            assert repr(c).endswith(f" to {pyecho.api.hostport(reached, port)}>")
            assert c.echo(b"x") == b"x"
        wait_for(lambda: len(events) == 2, 10, "the open and close events")
    assert [e.peer[0] for e in events] == [reached, reached]


@pytest.mark.parametrize(
    "host, numeric",
    [
        ("fe80::1%lo", "fe80::1%lo"),
        (f"fe80::1%{socket.if_nametoindex('lo')}", "fe80::1%lo"),  # link-local: by name
        ("::1%lo", f"::1%{socket.if_nametoindex('lo')}"),  # otherwise by index
        ("::ffff:127.0.0.1", MAPPED),
        ("::FFFF:7F00:1", MAPPED),
        ("0:0:0:0:0:0:0:1", LOOPBACK6),
    ],
)
def test_hosts_resolve_to_what_the_engines_write(host: str, numeric: str) -> None:
    """resolve() writes a numeric host as both engines write addresses
    (getnameinfo()), so a scope survives, in a form getaddrinfo() reads back."""
    for server in (True, False):
        assert pyecho._config.resolve((host, 1), server=server) == [(socket.AF_INET6, numeric, 1)]
        assert socket.getaddrinfo(numeric, 1, flags=socket.AI_NUMERICHOST)


@contextmanager
def refusing(host: str, port: int) -> Iterator[None]:
    """host:port refuses connections meanwhile: held by a socket that does not
    listen (or, if another socket here has that address, checked to refuse)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as holder:
        try:
            holder.bind((host, port))
        except OSError:
            with socket.socket(holder.family) as s:
                assert s.connect_ex((host, port)) != 0, f"something listens on {host}:{port}"
        yield


@pytest.fixture
def both_families(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """NAME resolves to the hosts in the list this yields, in its order, as a
    name with an A and an AAAA record does (/etc/hosts here has localhost as
    127.0.0.1 only; tests/test_ipv6_netns.py does it with a real /etc/hosts)."""
    real = socket.getaddrinfo
    order: list[str] = []

    def getaddrinfo(host, port, *args, **kwargs):  # type: ignore[no-untyped-def]
        if host != NAME:
            return real(host, port, *args, **kwargs)
        return [info for h in order for info in real(h, port, *args, **kwargs)]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield order


@pytest.mark.parametrize("order", [[LOOPBACK6, LOOPBACK], [LOOPBACK, LOOPBACK6]])
def test_a_client_tries_each_address_of_a_name_in_turn(both_families, order) -> None:
    """The first address refuses (its port is taken by a socket that does not
    listen), the client goes on to the next, where the server is."""
    both_families.extend(order)
    first, second = order

    def scenario(server, client):
        port = server.server_address[1]
        with refusing(first, port):
            return served_one_by_one(server, client, [NAME, NAME])

    result = run_matrix(scenario, host=second, mode="line")
    assert result["transcript"] == [(second, b"hi\n"), (second, b"hi\n")]
    assert result["events"] == events_of([second, second])


@pytest.mark.parametrize("order", [[LOOPBACK6, LOOPBACK], [LOOPBACK, LOOPBACK6]])
def test_a_server_binds_the_first_address_of_a_name(both_families, engine, order) -> None:
    both_families.extend(order)
    with pyecho.EchoServer((NAME, 0), engine=engine) as server:
        assert server.server_address[0] == order[0]


def test_a_client_that_finds_no_server_names_the_last_address_tried(
    both_families, engine: str
) -> None:
    both_families.extend([LOOPBACK6, LOOPBACK])
    with socket.socket(socket.AF_INET6) as a:
        a.bind((LOOPBACK6, 0))  # not listening: refuses
        port = a.getsockname()[1]
        with refusing(LOOPBACK, port), pytest.raises(ConnectionRefusedError) as info:
            pyecho.EchoClient((NAME, port), engine=engine, timeout=10)
    assert str(info.value) == f"[Errno 111] Connection refused: '127.0.0.1:{port}'"
    assert info.value.strerror == "Connection refused"  # as pyecho.cli explains it


@pytest.mark.parametrize("host", [LOOPBACK6, MAPPED, "::"])
def test_addresses_print_in_brackets(engine: str, host: str) -> None:
    with pyecho.EchoServer((host, 0), engine=engine, mode="line") as server:
        port = server.server_address[1]
        assert repr(server) == f"<EchoServer {engine} tcp line on [{host}]:{port}>"
        with pytest.raises(OSError) as info:  # the same address again: in use
            pyecho.EchoServer((host, port), engine=engine)
        assert str(info.value) == f"[Errno 98] Address already in use: '[{host}]:{port}'"


def test_messages_name_ipv6_servers_in_brackets(engine: str) -> None:
    with socket.socket(socket.AF_INET6) as silent:  # listens, never answers
        silent.bind((LOOPBACK6, 0))
        silent.listen()
        port = silent.getsockname()[1]
        with pyecho.EchoClient((LOOPBACK6, port), engine=engine, mode="raw", timeout=0.2) as c:
            assert repr(c) == f"<EchoClient {engine} tcp raw to [::1]:{port}>"
            with pytest.raises(TimeoutError, match=rf"the server at \[::1\]:{port} did not"):
                c.echo(b"x")
    with pytest.raises(ConnectionRefusedError) as info:
        pyecho.EchoClient((LOOPBACK6, port), engine=engine, timeout=10)
    assert str(info.value) == f"[Errno 111] Connection refused: '[::1]:{port}'"


@pytest.mark.parametrize("record", [True, False], ids=["relayed", "direct"])
def test_the_pytest_fixture_prints_ipv6_in_brackets(engine: str, record: bool) -> None:
    from pyecho.pytest_plugin import EchoServerFixture

    with EchoServerFixture((LOOPBACK6, 0), engine=engine, record=record).start() as server:
        port = server.server_address[1]
        assert repr(server) == f"<EchoServerFixture {engine} raw on [::1]:{port}>"
        with socket.create_connection(server.server_address, timeout=10) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
            client_port = s.getsockname()[1]
            with pytest.raises(
                AssertionError, match=rf"still open: #1 from \[::1\]:{client_port} "
            ):
                server.assert_connections_closed(timeout=0.2)


@pytest.mark.parametrize(
    "client_host, peer", [(LOOPBACK, MAPPED), (LOOPBACK6, LOOPBACK6), (MAPPED, MAPPED)]
)
def test_udp_on_dual_stack_names_peers_as_tcp_does(
    engine: str, client_host: str, peer: str
) -> None:
    """UDP on "::" echoes both families; its drop events name the source as
    TCP events do (an IPv4 one as ::ffff:127.0.0.1), the same from both
    engines. One datagram a second per source: the second is dropped."""
    events: list[pyecho.Event] = []
    with pyecho.EchoServer(
        ("::", 0), engine=engine, transport="udp", udp_rate_per_source=1, on_event=events.append
    ) as server:
        server.start()
        port = server.server_address[1]
        family = socket.AF_INET if client_host == LOOPBACK else socket.AF_INET6
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.connect((client_host, port))
            s.send(b"echoed")
            assert s.recv(100) == b"echoed"
            s.send(b"dropped")
            source = s.getsockname()[1]
        wait_for(lambda: events != [], 10, "the drop event")
        stats = server.stats
    assert events == [pyecho.Event("drop", 0, (peer, source), "rate_source", 1)]
    assert (stats.datagrams_in, stats.datagrams_out) == (2, 1)
    assert stats.dropped["rate_source"] == 1
