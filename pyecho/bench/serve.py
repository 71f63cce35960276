"""One benchmark server in its own process, so the OS can tell its CPU time
and memory apart from the load generator's.

    python -m pyecho.bench.serve {native,python,asyncio,uvloop} [--mode raw]
        [--udp] [--host 127.0.0.1]

(asyncio and uvloop: raw or line mode, with the Protocols below; over UDP a
DatagramProtocol.)

prints ``PORT <n>`` on stdout once listening (TCP) or bound (UDP) and serves
until killed (SIGTERM); it also dies with its parent (PR_SET_PDEATHSIG on
Linux; everywhere, when its stdin is a pipe, at that pipe's EOF). A line
``usage`` on that pipe is answered ``USAGE <user s> <system s> <ru_maxrss>``
from getrusage(): its figures where there is no /proc to read them from. The
floor servers are the C programs floor_server.c and floor_udp_server.c (see
servers.py), with the same PORT line.

pyecho's UDP rate limits are set to their maximum (10**9 datagrams per
second, globally and per source): the benchmark measures echoing, and the
limits' bookkeeping is still done for every datagram, as with the defaults.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import resource
import signal
import socket
import stat
import sys
import threading
from typing import Any

HOST = "127.0.0.1"
BACKLOG = 1024
PR_SET_PDEATHSIG = 1
# High enough never to be hit, low enough that the buckets are still kept.
UDP_RATE = 1_000_000_000


def raise_nofile_limit() -> int:
    """Raise the soft open-file limit to the hard one; returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl
            pass
    if stat.S_ISFIFO(os.fstat(0).st_mode):
        threading.Thread(target=_watch_stdin, name="stdin-watch", daemon=True).start()


def _watch_stdin() -> None:
    """Answer "usage" lines; exit at EOF (the parent is gone or done). It
    waits in read() without the GIL: the server does not pay for it."""
    for line in sys.stdin.buffer:
        if line.strip() == b"usage":
            ru = resource.getrusage(resource.RUSAGE_SELF)
            sys.stdout.write(f"USAGE {ru.ru_utime:.6f} {ru.ru_stime:.6f} {ru.ru_maxrss}\n")
            sys.stdout.flush()
    os._exit(0)


def _announce(port: int) -> None:
    sys.stdout.write(f"PORT {port}\n")
    sys.stdout.flush()


def serve_pyecho(engine: str, mode: str, udp: bool, host: str) -> None:
    from pyecho import EchoServer

    if udp:
        server = EchoServer(
            (host, 0),
            engine=engine,
            transport="udp",
            udp_rate=UDP_RATE,
            udp_rate_per_source=UDP_RATE,
        )
    else:
        server = EchoServer((host, 0), engine=engine, mode=mode, backlog=BACKLOG)
    _announce(server.server_address[1])
    server.serve_forever(poll_interval=0.5)


class EchoProtocol(asyncio.Protocol):
    """The standard library's echo server, as its documentation writes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None:  # asyncio and uvloop set it already; say so anyway
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[attr-defined]


class LineEchoProtocol(EchoProtocol):
    """A line echo server on asyncio: complete lines are echoed as they
    arrive, a whole buffer of them at once (one rfind, one write), the rest
    held. The least such a server does: no quit word, no line limit."""

    held = b""

    def data_received(self, data: bytes) -> None:
        buf = self.held + data if self.held else data
        end = buf.rfind(b"\n") + 1
        if end:
            self.transport.write(buf if end == len(buf) else buf[:end])  # type: ignore[attr-defined]
        self.held = buf[end:] if end < len(buf) else b""


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    """The standard library's UDP echo server, as its documentation writes it."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def _serve_asyncio(mode: str, udp: bool, host: str) -> None:
    loop = asyncio.get_running_loop()
    if udp:
        transport, _ = await loop.create_datagram_endpoint(
            EchoDatagramProtocol, local_addr=(host, 0)
        )
        _announce(transport.get_extra_info("sockname")[1])
        await loop.create_future()  # until killed
        return
    protocol = LineEchoProtocol if mode == "line" else EchoProtocol
    server = await loop.create_server(protocol, host, 0, backlog=BACKLOG)
    _announce(server.sockets[0].getsockname()[1])
    async with server:
        await server.serve_forever()


def serve_asyncio(use_uvloop: bool, mode: str, udp: bool = False, host: str = HOST) -> None:
    if use_uvloop:
        import uvloop

        uvloop.run(_serve_asyncio(mode, udp, host))
    else:
        asyncio.run(_serve_asyncio(mode, udp, host))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyecho.bench.serve")
    parser.add_argument("server", choices=["native", "python", "asyncio", "uvloop"])
    parser.add_argument("--mode", default="raw", choices=["raw", "line", "seed"])
    parser.add_argument("--udp", action="store_true", help="UDP echo (raw mode only)")
    parser.add_argument("--host", default=HOST, help="numeric address to serve on")
    args = parser.parse_args(argv)
    if args.udp and args.mode != "raw":
        parser.error("UDP has no modes: a datagram is the message")
    _die_with_parent()
    raise_nofile_limit()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if args.server not in ("native", "python") and args.mode == "seed":
        parser.error(f"{args.server} serves raw and line mode only")
    try:
        if args.server in ("native", "python"):
            serve_pyecho(args.server, args.mode, args.udp, args.host)
        else:
            serve_asyncio(args.server == "uvloop", args.mode, args.udp, args.host)
    except OSError as e:  # cannot listen there: one line for the benchmark to show
        print(f"{parser.prog}: cannot serve on {args.host}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
