"""Run inside a network namespace by tests/test_udp_netns.py (a veth pair
d0/d1 with 10.9.0.1/24, 10.9.0.2/24, 2001:db8::1/64 and 2001:db8::2/64 on
d0, a default route through it): UDP servers on the wildcard addresses, and
what they answer. Prints one JSON object.

    python nsudp.py groups --server native
    python nsudp.py wildcard --server native --client python
"""

from __future__ import annotations

import argparse
import json
import select
import socket
import sys
import time
from contextlib import ExitStack
from typing import Any

import pyecho

WAIT = 0.3  # seconds for an answer that must not come


def waiting(socks: dict[str, socket.socket]) -> dict[str, list[list[Any]]]:
    """The datagrams that came to each socket (each has sent one already)
    within WAIT seconds from now: [data, source]. The sockets are waited on
    together, not one WAIT after the other."""
    got: dict[str, list[list[Any]]] = {name: [] for name in socks}
    names = {sock: name for name, sock in socks.items()}
    deadline = time.monotonic() + WAIT
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select(list(names), [], [], left)
        for sock in ready:
            data, peer = sock.recvfrom(100)
            got[names[sock]].append([data.decode(), peer[0]])
    return got


def groups(engine: str) -> dict[str, Any]:
    """A datagram to each group address a server on 0.0.0.0 (or ::) gets:
    no answer; then one to its own address: answered."""
    out: dict[str, Any] = {}
    ifindex = socket.if_nametoindex("d0")
    for host, targets in (
        ("0.0.0.0", ["10.9.0.255", "255.255.255.255", "224.0.0.1"]),
        ("::", ["10.9.0.255", "255.255.255.255", "ff02::1"]),
    ):
        with pyecho.EchoServer((host, 0), engine=engine, transport="udp") as server:
            server.start()
            port = server.server_address[1]
            with ExitStack() as stack:
                socks = {}  # one socket per target: an answer shows what it answered
                for target in [*targets, "unicast"]:
                    v6 = ":" in target
                    s = stack.enter_context(
                        socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
                    )
                    if v6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, ifindex)
                        address: tuple = (target, port, 0, ifindex)
                    else:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                        s.setsockopt(
                            socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("10.9.0.1")
                        )
                        address = ("10.9.0.1" if target == "unicast" else target, port)
                    s.bind(("::" if v6 else "0.0.0.0", 0))
                    s.sendto(target.encode(), address)
                    socks[target] = s
                answers = waiting(socks)
            server.shutdown()
            stats = server.stats
            out[host] = {
                "answers": answers,
                "in": stats.datagrams_in,
                "out": stats.datagrams_out,
                "guard": stats.dropped["guard"],
            }
    # A server bound to the subnet's broadcast address itself.
    with pyecho.EchoServer(("10.9.0.255", 0), engine=engine, transport="udp") as server:
        server.start()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.bind(("10.9.0.1", 0))
            s.sendto(b"bound", server.server_address)
            answers = waiting({"10.9.0.255": s})
        server.shutdown()
        out["10.9.0.255"] = {"answers": answers, "guard": server.stats.dropped["guard"]}
    return out


def wildcard(server_engine: str, client_engine: str) -> dict[str, Any]:
    """A client connected to each address of a server on 0.0.0.0 (or ::):
    the echo, or the error (the answer left from another address)."""
    out: dict[str, Any] = {}
    for host, targets in (
        ("0.0.0.0", ["10.9.0.1", "10.9.0.2", "127.0.0.1", "127.0.0.2"]),
        ("::", ["10.9.0.2", "127.0.0.2", "2001:db8::1", "2001:db8::2", "::1"]),
    ):
        with pyecho.EchoServer((host, 0), engine=server_engine, transport="udp") as server:
            server.start()
            port = server.server_address[1]
            results = {}
            for target in targets:
                try:
                    with pyecho.EchoClient(
                        (target, port), engine=client_engine, transport="udp", timeout=2
                    ) as c:
                        results[target] = c.echo(b"to " + target.encode()).decode()
                except OSError as e:
                    results[target] = f"{type(e).__name__}: {e}"
            out[host] = results
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["groups", "wildcard"])
    parser.add_argument("--server", choices=pyecho.ENGINES, required=True)
    parser.add_argument("--client", choices=pyecho.ENGINES, default="native")
    args = parser.parse_args()
    if args.scenario == "groups":
        result = groups(args.server)
    else:
        result = wildcard(args.server, args.client)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
