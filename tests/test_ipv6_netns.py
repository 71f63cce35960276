"""IPv6 where the machine's own network cannot be used or changed, each in a
private network namespace (tests/netns.py) with tests/nsprobe.py run inside
for every {native, python} server x client pair (the quick tier: the pairs
of one engine):

- a link-local address with its scope (fe80::1%d0, on an interface of the
  namespace's own);
- a name that /etc/hosts (the namespace's own) gives both families;
- a system whose IPv6 sockets default to IPv6 only (net.ipv6.bindv6only=1):
  "::" must still serve IPv4, which the engines ask for themselves;
- a system with IPv6 disabled: a clear error, and "::" still serves IPv4.

Skipped, saying why, where no namespace can be made (not root, say).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import Netns

from conftest import ENGINE_PAIRS, ENGINES, LOOPBACK, LOOPBACK6

pytestmark = pytest.mark.native

PROBE = str(Path(__file__).with_name("nsprobe.py"))
# Every server x client pair; the quick tier runs the two of one engine.
COMBOS = ENGINE_PAIRS
MAPPED = "::ffff:127.0.0.1"
LINK_LOCAL = "fe80::1%d0"
NAME = "both-families.test"

# The longest an address with a scope can be shown: the longest link-local
# address and the longest interface name (15 characters).
LONGEST = "febf:ffff:ffff:ffff:ffff:ffff:ffff:fffe%d0-fifteen-char"


def link(name: str, peer: str, address: str) -> str:
    """Shell commands: interface ``name`` (a dummy one, or one end of a veth
    pair where the kernel has no dummy driver), up, with ``address`` on it
    without duplicate address detection, so it is usable at once."""
    return (
        f"{{ ip link add {name} type dummy 2>/dev/null || {{ ip link add {name} type veth "
        f"peer name {peer} && ip link set {peer} up; }}; }}; "
        f"ip link set {name} up; ip -6 addr add {address}/64 dev {name} nodad"
    )


LINK_SETUP = "; ".join(
    [link("d0", "d1", "fe80::1"), link("d0-fifteen-char", "d1-long", LONGEST.split("%")[0])]
)


def namespace(setup: str) -> Iterator[Netns]:
    ns = Netns(setup)
    try:
        if ns.holder is None:
            pytest.skip(ns.why_not)
        yield ns
    finally:
        ns.close()


@pytest.fixture(scope="module")
def link_ns(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Netns]:
    hosts = tmp_path_factory.mktemp("etc") / "hosts"
    hosts.write_text(f"127.0.0.1 localhost\n::1 {NAME}\n127.0.0.1 {NAME}\n")
    yield from namespace(f"{LINK_SETUP}; mount --bind {hosts} /etc/hosts")


@pytest.fixture(scope="module")
def v6only_ns() -> Iterator[Netns]:
    yield from namespace("sysctl -q -w net.ipv6.bindv6only=1")


@pytest.fixture(scope="module")
def no_ipv6_ns() -> Iterator[Netns]:
    yield from namespace("sysctl -q -w net.ipv6.conf.all.disable_ipv6=1")


def probe(
    ns: Netns,
    server: str,
    client: str,
    serve: str,
    *connect: str,
    udp: bool = False,
    relay: bool = False,
) -> dict:
    argv = [sys.executable, PROBE, "--server", server, "--client", client, "--serve", serve]
    if udp:
        argv.append("--udp")
    if relay:
        argv.append("--relay")
    for host in connect:
        argv += ["--connect", host]
    done = ns.run(argv)
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


def served(result: dict) -> list[tuple]:
    """What each client reached and got back, or its error."""
    return [
        (c["reached"], c["echo"]) if "echo" in c else tuple(c["error"]) for c in result["clients"]
    ]


def peers(result: dict) -> list[tuple]:
    """The events without their connection ids, in order."""
    return [(kind, peer, reason) for kind, _, peer, reason in result["events"]]


def one_each(*hosts: str) -> list[tuple]:
    return [e for h in hosts for e in (("open", h, None), ("close", h, "peer"))]


@pytest.mark.parametrize("server, client", COMBOS)
def test_link_local_address_with_scope(link_ns: Netns, server: str, client: str) -> None:
    shown = link_ns.run(["ip", "-o", "link", "show", "d0"]).stdout.decode()
    index = int(shown.split(":", 1)[0])  # "3: d0@d1: <BROADCAST,..."
    result = probe(link_ns, server, client, LINK_LOCAL, "-", LINK_LOCAL, f"fe80::1%{index}")
    host, port = result["server_address"]
    assert host == LINK_LOCAL  # the scope kept, by interface name
    assert result["server_repr"] == f"<EchoServer {server} tcp line on [{LINK_LOCAL}]:{port}>"
    assert served(result) == [(LINK_LOCAL, "hi\n")] * 3
    assert {c["repr"] for c in result["clients"]} == {
        f"<EchoClient {client} tcp line to [{LINK_LOCAL}]:{port}>"
    }
    assert peers(result) == one_each(LINK_LOCAL, LINK_LOCAL, LINK_LOCAL)


@pytest.mark.parametrize("server, client", COMBOS)
def test_the_plugins_relay_fronts_a_link_local_address(
    link_ns: Netns, server: str, client: str
) -> None:
    """The pytest plugin's recording relay (record=True, its default) in
    front of a server on fe80::1%d0: bound, connected to and named with the
    scope, so clients reach it, it records them, and the events name them."""
    result = probe(link_ns, server, client, LINK_LOCAL, "-", LINK_LOCAL, relay=True)
    assert "server_error" not in result, result["server_error"]
    host, port = result["server_address"]
    assert host == LINK_LOCAL and port != result["engine_address"][1]  # the relay's
    assert result["engine_address"][0] == LINK_LOCAL
    assert served(result) == [(LINK_LOCAL, "hi\n")] * 2
    assert sorted(result["received"].values()) == ["hi\n", "hi\n"]
    assert peers(result) == one_each(LINK_LOCAL, LINK_LOCAL)
    assert result["settled"] is True  # its own probe connection went through too
    assert result["errors"] == []


@pytest.mark.parametrize("server, client", COMBOS)
def test_the_longest_scoped_address_is_shown_whole(
    link_ns: Netns, server: str, client: str
) -> None:
    result = probe(link_ns, server, client, LONGEST, "-")
    assert result["server_address"][0] == LONGEST
    assert served(result) == [(LONGEST, "hi\n")]
    assert peers(result) == one_each(LONGEST)


@pytest.mark.parametrize("server, client", COMBOS)
def test_link_local_address_with_scope_over_udp(link_ns: Netns, server: str, client: str) -> None:
    result = probe(link_ns, server, client, LINK_LOCAL, "-", LINK_LOCAL, udp=True)
    assert result["server_address"][0] == LINK_LOCAL
    assert served(result) == [(LINK_LOCAL, "hi\n")] * 2
    assert result["datagrams"] == [2, 2]


@pytest.mark.parametrize("server, client", COMBOS)
@pytest.mark.parametrize("where", [LOOPBACK, LOOPBACK6])
def test_a_name_with_both_families_in_etc_hosts(
    link_ns: Netns, server: str, client: str, where: str
) -> None:
    """The client tries the name's addresses in the resolver's order: the
    server is on one of them, nothing on the other (refused)."""
    result = probe(link_ns, server, client, where, NAME)
    (only,) = result["clients"]
    assert sorted(only["tries"]) == sorted([LOOPBACK, LOOPBACK6])
    assert served(result) == [(where, "hi\n")]
    assert peers(result) == one_each(where)


@pytest.mark.parametrize("engine", ENGINES)
def test_a_server_on_a_name_with_both_families_binds_the_first(link_ns: Netns, engine: str) -> None:
    result = probe(link_ns, engine, engine, NAME, NAME)
    (only,) = result["clients"]
    assert result["server_address"][0] == only["tries"][0]
    assert served(result) == [(only["tries"][0], "hi\n")]


@pytest.mark.parametrize("server, client", COMBOS)
def test_dual_stack_whatever_the_system_default(v6only_ns: Netns, server: str, client: str) -> None:
    """With IPv6 sockets IPv6-only by default, "::" still serves IPv4, and an
    IPv4-mapped address can still be listened on and connected to."""
    result = probe(v6only_ns, server, client, "::", LOOPBACK, LOOPBACK6)
    assert served(result) == [(LOOPBACK, "hi\n"), (LOOPBACK6, "hi\n")]
    assert peers(result) == one_each(MAPPED, LOOPBACK6)
    result = probe(v6only_ns, server, client, MAPPED, LOOPBACK, MAPPED)
    assert served(result) == [(LOOPBACK, "hi\n"), (MAPPED, "hi\n")]
    assert peers(result) == one_each(MAPPED, MAPPED)
    result = probe(v6only_ns, server, client, LOOPBACK, MAPPED)
    assert served(result) == [(MAPPED, "hi\n")]
    assert peers(result) == one_each(LOOPBACK)


@pytest.mark.parametrize("server, client", COMBOS)
def test_dual_stack_over_udp_whatever_the_system_default(
    v6only_ns: Netns, server: str, client: str
) -> None:
    result = probe(v6only_ns, server, client, "::", LOOPBACK, LOOPBACK6, MAPPED, udp=True)
    assert served(result) == [(LOOPBACK, "hi\n"), (LOOPBACK6, "hi\n"), (MAPPED, "hi\n")]
    assert result["datagrams"] == [3, 3]


@pytest.mark.parametrize("server, client", COMBOS)
def test_ipv6_disabled(no_ipv6_ns: Netns, server: str, client: str) -> None:
    """No ::1 to listen on or connect to: the OS's error, naming the address,
    the same from both engines. "::" still serves IPv4 (dual stack)."""
    result = probe(no_ipv6_ns, server, client, LOOPBACK6)
    assert result == {
        "server_error": ["OSError", 99, "[Errno 99] Cannot assign requested address: '[::1]:0'"]
    }
    result = probe(no_ipv6_ns, server, client, "::", LOOPBACK, LOOPBACK6)
    port = result["server_address"][1]
    assert served(result) == [
        (LOOPBACK, "hi\n"),
        ("OSError", 99, f"[Errno 99] Cannot assign requested address: '[::1]:{port}'"),
    ]
    assert peers(result) == one_each(MAPPED)
