"""UDP on wildcard addresses, in a private network namespace (tests/netns.py)
with tests/nsudp.py run inside, for both engines (docs/PROTOCOL.md, "UDP"):

- a datagram sent to a subnet broadcast address, 255.255.255.255, 224.0.0.1
  or ff02::1 is never answered (Fraggle: one forged datagram, an answer from
  every server on the segment), and one sent to the server's own address is;
- a server on 0.0.0.0 or :: answers from the address it was asked on, so a
  client connected to a second address (or 127.0.0.2) gets its echo.

Skipped, saying why, where no namespace can be made (not root, say).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import Netns

from conftest import ENGINE_PAIRS, ENGINES

PROBE = str(Path(__file__).with_name("nsudp.py"))
SETUP = (
    "ip link add d0 type veth peer name d1; ip link set d1 up; ip link set d0 up; "
    "ip addr add 10.9.0.1/24 brd + dev d0; ip addr add 10.9.0.2/24 dev d0; "
    "ip -6 addr add 2001:db8::1/64 dev d0 nodad; ip -6 addr add 2001:db8::2/64 dev d0 nodad; "
    "ip route add default dev d0"
)


@pytest.fixture(scope="module")
def ns() -> Iterator[Netns]:
    n = Netns(SETUP)
    try:
        if n.holder is None:
            pytest.skip(n.why_not)
        yield n
    finally:
        n.close()


def probe(ns: Netns, *args: str) -> dict:
    done = ns.run([sys.executable, PROBE, *args])
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return json.loads(done.stdout)


@pytest.mark.parametrize("server", ENGINES)
def test_datagrams_to_a_group_are_not_answered(ns: Netns, server: str) -> None:
    result = probe(ns, "groups", "--server", server)
    for host, targets in (
        ("0.0.0.0", ["10.9.0.255", "255.255.255.255", "224.0.0.1"]),
        ("::", ["10.9.0.255", "255.255.255.255", "ff02::1"]),
    ):
        got = result[host]
        assert got["answers"] == {
            **dict.fromkeys(targets, []),
            "unicast": [["unicast", "10.9.0.1"]],
        }
        # Each group datagram reached the server (a broadcast may come in on
        # both ends of the veth pair) and was refused by the guard.
        assert got["in"] > len(targets)
        assert (got["out"], got["guard"]) == (1, got["in"] - 1)
    bound = result["10.9.0.255"]  # a server bound to the broadcast address
    assert bound["answers"] == {"10.9.0.255": []} and bound["guard"] >= 1


@pytest.mark.parametrize("server, client", ENGINE_PAIRS)
def test_a_wildcard_server_answers_from_the_address_asked(
    ns: Netns, server: str, client: str
) -> None:
    result = probe(ns, "wildcard", "--server", server, "--client", client)
    for host, targets in result.items():
        assert targets == {t: f"to {t}" for t in targets}, host
