"""Run inside a network namespace by tests/test_ipv6_netns.py: serve on one
address with one engine, connect to it from others with another engine,
echo once each, and print what happened as one JSON object.

    python nsprobe.py --server native --client python --serve fe80::1%d0 \\
        --connect - --connect fe80::1%d0 [--udp]

``--connect -`` connects to the server's own address (server_address). TCP
in line mode, or UDP (``--udp``). ``--relay``: the pytest plugin's server
(EchoServerFixture, record=True), its recording relay in front of the
engine. Errors are reported, not raised: [class name, errno, str()].
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import pyecho
from pyecho._config import resolve

WAIT = 10.0  # seconds for the server to see every connection closed


def error(e: Exception) -> list:
    return [type(e).__name__, getattr(e, "errno", None), str(e)]


def _settle(server: pyecho.EchoServer, served: int, udp: bool) -> None:
    """Wait (at most WAIT) until the server has accepted and closed every
    connection that was served."""
    deadline = time.monotonic() + WAIT
    while (
        not udp
        and (server.stats.accepted < served or server.stats.open)
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)


def probe(
    server_engine: str,
    client_engine: str,
    serve: str,
    connect: list[str],
    udp: bool,
    relay: bool = False,
) -> dict:
    settings: dict[str, Any] = {"transport": "udp"} if udp else {"mode": "line"}
    out: dict[str, Any] = {}
    events: list[pyecho.Event] = []  # appended on the serving thread
    server: pyecho.EchoServer
    try:
        if relay:
            from pyecho.pytest_plugin import EchoServerFixture

            server = EchoServerFixture(
                (serve, 0), engine=server_engine, on_event=events.append, record=True, **settings
            )
            out["engine_address"] = list(server.engine_address)
        else:
            server = pyecho.EchoServer(
                (serve, 0), engine=server_engine, on_event=events.append, **settings
            )
    except (OSError, ValueError) as e:
        return {"server_error": error(e)}
    with server:
        server.start()
        port = server.server_address[1]
        out["server_address"] = list(server.server_address)
        out["server_repr"] = repr(server)
        out["clients"] = clients = []
        for host in connect:
            address = server.server_address if host == "-" else (host, port)
            result: dict[str, Any] = {}
            try:
                result["tries"] = [h for _, h, _ in resolve(address, server=False)]
                with pyecho.EchoClient(address, engine=client_engine, timeout=5, **settings) as c:
                    result["reached"] = c.server_address[0]
                    result["repr"] = repr(c)
                    result["echo"] = c.echo(b"hi\n").decode()
            except (OSError, ValueError) as e:
                result["error"] = error(e)
            clients.append(result)
            # The server sees this client closed before the next connects:
            # a close and an accept in one turn of its loop come in the
            # poller's order, which differs between backends.
            _settle(server, sum("echo" in c for c in clients), udp)
        if relay:
            assert isinstance(server, EchoServerFixture)
            try:  # its probe connection goes through the link-local address too
                server.assert_connections_closed(WAIT)
                out["settled"] = True
            except (AssertionError, OSError) as e:
                out["settled"] = error(e)
            out["received"] = {i: t.decode() for i, t in server.received.items()}
            out["errors"] = [repr(e) for e in server.errors]
        server.shutdown()
        out["datagrams"] = [server.stats.datagrams_in, server.stats.datagrams_out]
    out["events"] = [[e.kind, e.conn_id, e.peer[0], e.reason] for e in events]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", choices=pyecho.ENGINES, required=True)
    parser.add_argument("--client", choices=pyecho.ENGINES, required=True)
    parser.add_argument("--serve", required=True, help="the host to listen on")
    parser.add_argument("--connect", action="append", default=[], help="a host to connect to")
    parser.add_argument("--udp", action="store_true", help="UDP rather than TCP")
    parser.add_argument("--relay", action="store_true", help="the pytest plugin's relay")
    args = parser.parse_args()
    result = probe(args.server, args.client, args.serve, args.connect, args.udp, args.relay)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
