"""Start a benchmark server in its own process and read its CPU time and
memory from the OS (/proc)."""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

SERVERS = ("floor", "native", "python", "asyncio", "uvloop")
DESCRIPTIONS = {
    "floor": "minimal single-threaded C epoll echo server (the floor: the kernel's cost); "
    "UDP: a blocking recvmmsg/sendmmsg loop, 32 datagrams a batch",
    "native": "pyecho, engine='native' (C core through cffi)",
    "python": "pyecho, engine='python' (pure-Python reference engine)",
    "asyncio": "standard library asyncio Protocol echo server "
    "(line mode: echoes each buffer's complete lines with one write; "
    "UDP: a DatagramProtocol, sendto in datagram_received)",
    "uvloop": "the same asyncio Protocols on uvloop",
}
# The modes each server speaks: the reference servers have no seed mode, the
# floor server echoes raw bytes only.
SERVER_MODES = {
    "floor": ("raw",),
    "native": ("raw", "line", "seed"),
    "python": ("raw", "line", "seed"),
    "asyncio": ("raw", "line"),
    "uvloop": ("raw", "line"),
}
TRANSPORTS = ("tcp", "udp")
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
CLK_TCK = os.sysconf("SC_CLK_TCK")
START_TIMEOUT = 30.0

# glibc's malloc, left alone, makes asyncio's Protocol path bimodal: its
# recv(256 KiB) buffer is above the default 128 KiB mmap threshold, so until
# the dynamic threshold happens to rise each read costs mmap + mremap + munmap
# (or brk twice), about 4x the CPU per round trip. Fixing the thresholds
# measures every Python server in the steady state it eventually reaches;
# the C servers do not allocate per read and are unaffected.
STEADY_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "2097152"}


def show_host(host: str) -> str:
    """An address as the benchmark prints it: IPv6 in brackets ([::1])."""
    return f"[{host}]" if ":" in host else host


class ServerUnavailable(RuntimeError):
    """This server cannot run here (uvloop missing, no C compiler)."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "pyecho"


FLOOR_SOURCES = {"tcp": "floor_server", "udp": "floor_udp_server"}


def floor_binary(transport: str = "tcp") -> Path:
    """Compile the floor server for ``transport`` (floor_server.c,
    floor_udp_server.c) with ``cc -O2`` once per source version."""
    name = FLOOR_SOURCES[transport]
    source = importlib.resources.files("pyecho.bench").joinpath(f"{name}.c").read_bytes()
    cc = os.environ.get("CC", "cc")
    digest = hashlib.sha256(source + cc.encode()).hexdigest()[:16]
    binary = cache_dir() / f"{name}-{digest}"
    if binary.exists():
        return binary
    if shutil.which(cc.split()[0]) is None:
        raise ServerUnavailable(f"no C compiler ({cc}) to build the floor server")
    binary.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_bytes(source)
        out = Path(tmp) / name
        proc = subprocess.run(
            [*cc.split(), "-O2", "-std=c11", "-o", str(out), str(src)],
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0:
            raise ServerUnavailable(f"cannot build the floor server: {proc.stderr.strip()}")
        os.replace(out, binary)  # atomic: concurrent runs agree
    return binary


def unavailable_reason(name: str, transport: str = "tcp") -> str | None:
    """Why ``name`` cannot serve ``transport`` here, or None if it can."""
    if name == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install 'pyecho[bench]')"
    if name == "floor":
        try:
            floor_binary(transport)
        except ServerUnavailable as e:
            return str(e)
    return None


def _command(name: str, mode: str, transport: str, host: str) -> list[str]:
    if transport == "udp" and mode != "raw":
        raise ValueError("UDP has no modes: a datagram is the message")
    if mode not in SERVER_MODES[name]:
        raise ValueError(f"the {name} server has no {mode} mode")
    if name == "floor":
        if transport == "udp":
            return [str(floor_binary("udp")), host, "0"]
        return [str(floor_binary()), host, "0", "1024"]
    udp = ["--udp"] if transport == "udp" else []
    return [sys.executable, "-m", "pyecho.bench.serve", name, "--mode", mode, "--host", host, *udp]


class ServerProcess:
    """A running server: ``port``, ``pid``, ``cpu_seconds()``, ``rss()``."""

    def __init__(
        self,
        name: str,
        mode: str = "raw",
        *,
        transport: str = "tcp",
        host: str = "127.0.0.1",
        steady_malloc: bool = True,
    ) -> None:
        if name not in SERVERS:
            raise ValueError(f"unknown server {name!r}; one of {', '.join(SERVERS)}")
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; one of {', '.join(TRANSPORTS)}")
        self.name = name
        self.mode = mode
        self.transport = transport
        self.host = host
        self._stderr: list[str] = []
        self.proc = subprocess.Popen(
            _command(name, mode, transport, host),
            # -m puts the working directory first on sys.path: run from the
            # folder holding the very pyecho package this process imported.
            cwd=PACKAGE_PARENT,
            env={**os.environ, **(STEADY_MALLOC_ENV if steady_malloc else {})},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.port = self._read_port()
        self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drainer.start()

    def _read_port(self) -> int:
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(START_TIMEOUT)
        line = result[0] if result else ""
        if not line.startswith("PORT "):
            self.proc.kill()
            _, err = self.proc.communicate()
            raise RuntimeError(
                f"server {self.name} ({self.transport}, {self.mode}) did not start on "
                f"{show_host(self.host)}: {line!r} {err.strip()}"
            )
        return int(line.split()[1])

    def _drain_stderr(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]
            self._stderr.append(line)
            del self._stderr[:-50]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def check_alive(self) -> None:
        if not self.alive():
            raise RuntimeError(
                f"server {self.name} exited with {self.proc.returncode}: "
                + "".join(self._stderr).strip()
            )

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds of every thread, from /proc/<pid>/stat."""
        with open(f"/proc/{self.pid}/stat") as f:
            stat = f.read()
        fields = stat[stat.rindex(")") + 2 :].split()
        return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK

    def status_kib(self, key: str) -> int:
        """A memory figure (VmRSS, VmHWM) from /proc/<pid>/status, in KiB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise KeyError(key)

    def rss(self) -> int:
        """Resident set size now, bytes."""
        return self.status_kib("VmRSS") * 1024

    def peak_rss(self) -> int:
        """Peak resident set size, bytes."""
        return self.status_kib("VmHWM") * 1024

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        drainer = getattr(self, "_drainer", None)
        if drainer is not None:
            drainer.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_settled(server: ServerProcess, seconds: float = 0.05) -> None:
    """Give the server a moment to finish what it was doing."""
    time.sleep(seconds)
    server.check_alive()
