"""The TLS benchmark: pyecho's engines against asyncio + ssl, uvloop + ssl and
a minimal C OpenSSL echo server (the floor), each in its own process, driven
by a C OpenSSL client (tls_client.c) that verifies every echoed byte.

    python -m pyecho.bench.tls [--seconds 3] [--json FILE]

Rows: handshakes per second (a new connection, handshake, one 64 B echo and
close_notify per round trip, 4 client threads), and round trips over
established connections (50 connections x 64 B, 10 connections x 64 KiB,
one message in flight each). For each server: round trips per second and
the server's CPU time per round trip (user + system, from /proc). Targets
(issue 18), as ratios within one run: native at or above uvloop + ssl in
every row, and native's CPU per round trip within 1.15x the floor's.
Needs a C compiler, OpenSSL's headers and trustme.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).parent
ROWS = (
    ("handshakes (new connection per 64 B echo)", "hs", 4, 64),
    ("50 x 64 B", "rt", 50, 64),
    ("10 x 64 KiB", "rt", 10, 65536),
)
SERVERS = ("native", "python", "asyncio", "uvloop", "floor")
TARGET_CPU_RATIO = 1.15

PYECHO_SERVER = """
import sys
import pyecho
engine, cert, key = sys.argv[1:4]
tls = pyecho.TLS(certfile=cert, keyfile=key)
with pyecho.EchoServer(("127.0.0.1", 0), engine=engine, mode="raw", backlog=1024, tls=tls) as s:
    print("PORT", s.server_address[1], flush=True)
    s.serve_forever()
"""

ASYNC_SERVER = """
import asyncio, ssl, sys
which, cert, key = sys.argv[1:4]

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport
    def data_received(self, data):
        self.transport.write(data)

async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0, ssl=ctx, backlog=1024)
    print("PORT", server.sockets[0].getsockname()[1], flush=True)
    await asyncio.Future()

if which == "uvloop":
    import uvloop
    uvloop.install()
asyncio.run(main())
"""


class Unavailable(Exception):
    pass


def _compile(name: str, libs: list[str], cache: Path) -> Path:
    src = HERE / f"{name}.c"
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc.split()[0]) is None:
        raise Unavailable(f"no C compiler ({cc})")
    digest = hashlib.sha256(src.read_bytes() + cc.encode()).hexdigest()[:16]
    out = cache / f"{name}-{digest}"
    if not out.exists():
        run = subprocess.run(
            [*cc.split(), "-O2", "-std=c11", "-o", str(out), str(src), *libs],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if run.returncode != 0:
            raise Unavailable(f"cannot build {src.name} (OpenSSL's headers?): {run.stderr[-500:]}")
    return out


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    server: str
    row: str
    round_trips_per_s: float
    cpu_us_per_round_trip: float


def _start(server: str, cert: str, key: str, floor: Path) -> subprocess.Popen[str]:
    if server == "floor":
        command = [str(floor), cert, key]
    elif server in ("native", "python"):
        command = [sys.executable, "-c", PYECHO_SERVER, server, cert, key]
    else:
        command = [sys.executable, "-c", ASYNC_SERVER, server, cert, key]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise Unavailable(f"{server}: {line}{proc.stderr.read() if proc.stderr else ''}")
    proc.port = int(line.split()[1])  # type: ignore[attr-defined]
    return proc


def measure(seconds: float) -> list[Result]:
    import trustme

    results: list[Result] = []
    cache = Path(tempfile.gettempdir()) / "pyecho-bench-tls"
    cache.mkdir(exist_ok=True)
    floor = _compile("tls_floor_server", ["-lssl", "-lcrypto"], cache)
    client = _compile("tls_client", ["-lssl", "-lcrypto", "-lpthread"], cache)
    with tempfile.TemporaryDirectory(prefix="pyecho-bench-tls-") as tmp:
        ca = trustme.CA()
        leaf = ca.issue_cert("127.0.0.1", "localhost")
        cafile, cert, key = (os.path.join(tmp, n) for n in ("ca.pem", "cert.pem", "key.pem"))
        ca.cert_pem.write_to_path(cafile)
        with open(cert, "wb") as f:
            f.write(b"".join(b.bytes() for b in leaf.cert_chain_pems))
        leaf.private_key_pem.write_to_path(key)
        for server in SERVERS:
            try:
                proc = _start(server, cert, key, floor)
            except Unavailable as e:
                print(f"skipped {server}: {e}", file=sys.stderr)
                continue
            try:
                for label, mode, conns, size in ROWS:
                    before = _cpu_seconds(proc.pid)
                    run = subprocess.run(
                        [str(client), cafile, str(proc.port), mode]  # type: ignore[attr-defined]
                        + [str(conns), str(size), str(seconds)],
                        capture_output=True,
                        text=True,
                        timeout=seconds + 60,
                    )
                    cpu = _cpu_seconds(proc.pid) - before
                    words = run.stdout.split()
                    if run.returncode != 0 or words[:1] != ["COUNT"]:
                        raise RuntimeError(f"{server} {label}: {run.stdout}{run.stderr}")
                    count, ns = int(words[1]), int(words[3])
                    results.append(
                        Result(server, label, count / (ns / 1e9), cpu / max(count, 1) * 1e6)
                    )
                    time.sleep(0.2)
            finally:
                proc.kill()
                proc.wait()
    return results


def report(results: list[Result]) -> str:
    by = {(r.server, r.row): r for r in results}
    servers = [s for s in SERVERS if any(r.server == s for r in results)]
    head = "| row | " + " | ".join(servers) + " |"
    lines = [head, "|---" * (len(servers) + 1) + "|"]
    for label, _, _, _ in ROWS:
        cells = []
        for s in servers:
            r = by.get((s, label))
            cells.append(
                "-"
                if r is None
                else f"{r.round_trips_per_s:,.0f}/s, {r.cpu_us_per_round_trip:.1f} µs"
            )
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Round trips per second, and the server's CPU time per round trip.")
    lines.append("")
    for label, _, _, _ in ROWS:
        native, uv, floor = (by.get((s, label)) for s in ("native", "uvloop", "floor"))
        if native and uv:
            ratio = native.round_trips_per_s / uv.round_trips_per_s
            met = "met" if ratio >= 1 else "missed"
            lines.append(f"- {label}: native / uvloop + ssl = {ratio:.2f}x (target >= 1: {met})")
        if native and floor:
            ratio = native.cpu_us_per_round_trip / floor.cpu_us_per_round_trip
            met = "met" if ratio <= TARGET_CPU_RATIO else "missed"
            lines.append(
                f"- {label}: native CPU per round trip / floor's = {ratio:.2f}x "
                f"(target <= {TARGET_CPU_RATIO}: {met})"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pyecho.bench.tls", description=__doc__)
    p.add_argument("--seconds", type=float, default=3.0, help="per row and server (default: 3)")
    p.add_argument("--json", help="also write the results to this file")
    args = p.parse_args(argv)
    try:
        results = measure(args.seconds)
    except Unavailable as e:
        print(f"pyecho.bench.tls: {e}", file=sys.stderr)
        return 1
    print(report(results))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
