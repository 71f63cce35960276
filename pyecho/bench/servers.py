"""Start a benchmark server in its own process and read its CPU time and
memory from the OS: /proc on Linux; elsewhere the server reports its own
getrusage() when asked on its stdin (the Python servers, pyecho.bench.serve)
and ``ps`` its resident size. The floor servers are Linux programs (epoll,
recvmmsg, and /proc for their CPU time): elsewhere the benchmark says it has
no floor rows instead of measuring something else."""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import os
import re
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
# A native *variant* is the native server with another build of the C core
# (PYECHO_LIBRARY): "native-poll" is the core built with -DPYECHO_POLLER=poll.
VARIANT_PREFIX = "native-"
PACKAGE_PARENT = str(Path(__file__).resolve().parents[2])
CLK_TCK = os.sysconf("SC_CLK_TCK")
# /proc/<pid>/stat and status: the figures of a process from the outside.
HAVE_PROC = Path("/proc/self/stat").exists() and Path("/proc/self/status").exists()
# getrusage()'s ru_maxrss unit: bytes on macOS, KiB on Linux and the BSDs.
MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
FLOOR_PLATFORM = sys.platform.startswith("linux")
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


def base_server(name: str) -> str:
    """The server a name runs: "native" for a native variant."""
    return "native" if name.startswith(VARIANT_PREFIX) else name


def source_tree() -> Path | None:
    """The source tree this pyecho runs from (a clone or an editable
    install), or None for an installed wheel: no csrc/ to build from."""
    root = Path(PACKAGE_PARENT)
    if (root / "CMakeLists.txt").is_file() and (root / "csrc").is_dir():
        return root
    return None


def _imports(library: Path, symbol: str) -> bool:
    """Whether an ELF shared library names ``symbol`` in its dynamic string
    table (what it imports or exports)."""
    return b"\0" + symbol.encode() + b"\0" in library.read_bytes()


def core_with_poller(poller: str) -> Path:
    """The C core built from this pyecho's source tree with
    ``-DPYECHO_POLLER=<poller>`` (cmake), once per source version, cached:
    the benchmark's row for that backend. ServerUnavailable says why not."""
    if not poller.isidentifier():
        raise ServerUnavailable(f"{poller!r} is not a poller name")
    root = source_tree()
    if root is None:
        raise ServerUnavailable(
            "no source tree to build the core from (an installed wheel): build it with "
            f"cmake -DPYECHO_POLLER={poller} and pass --native-library {poller}=PATH"
        )
    cmake_lists = (root / "CMakeLists.txt").read_text()
    if re.search(r"\bPYECHO_POLLER\b", cmake_lists) is None:
        raise ServerUnavailable(
            "this source tree's CMakeLists.txt has no PYECHO_POLLER option: "
            "no other poller backend to build"
        )
    cmake = shutil.which("cmake")
    if cmake is None:
        raise ServerUnavailable("no cmake to build the core")
    digest = hashlib.sha256(poller.encode() + cmake_lists.encode())
    for f in sorted((root / "csrc").iterdir()):
        if f.suffix in (".c", ".h", ".map"):
            digest.update(f.name.encode() + f.read_bytes())
    library = cache_dir() / f"libpyecho_core-{poller}-{digest.hexdigest()[:16]}.so"
    if library.exists():
        return library
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for step in (
            [cmake, "-S", str(root), "-B", tmp, "-DCMAKE_BUILD_TYPE=Release",
             f"-DPYECHO_POLLER={poller}"],
            [cmake, "--build", tmp, "--target", "pyecho_core", "-j2"],
        ):  # fmt: skip
            proc = subprocess.run(step, capture_output=True, text=True, timeout=600)
            if proc.returncode != 0:
                out = (proc.stderr.strip() or proc.stdout.strip())[-2000:]
                raise ServerUnavailable(f"cannot build the core with poller {poller}: {out}")
        built = Path(tmp) / "libpyecho_core.so"
        if sys.platform.startswith("linux") and poller != "epoll" and _imports(built, "epoll_wait"):
            raise ServerUnavailable(
                f"the core built with -DPYECHO_POLLER={poller} still calls epoll_wait: "
                "the option did not select the backend"
            )
        shutil.copyfile(built, Path(tmp) / "lib.so")
        os.replace(Path(tmp) / "lib.so", library)  # atomic: concurrent runs agree
    return library


def unavailable_reason(name: str, transport: str = "tcp") -> str | None:
    """Why ``name`` cannot serve ``transport`` here, or None if it can."""
    if name == "uvloop" and importlib.util.find_spec("uvloop") is None:
        return "uvloop is not installed (pip install 'pyecho[bench]')"
    if name == "floor":
        if not FLOOR_PLATFORM or not HAVE_PROC:
            return (
                "the floor servers are Linux programs (epoll, recvmmsg, /proc for their CPU "
                f"time): no floor rows on {sys.platform}"
            )
        try:
            floor_binary(transport)
        except ServerUnavailable as e:
            return str(e)
    return None


def _command(name: str, mode: str, transport: str, host: str) -> list[str]:
    if transport == "udp" and mode != "raw":
        raise ValueError("UDP has no modes: a datagram is the message")
    name = base_server(name)
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
        library: Path | None = None,
        use_proc: bool | None = None,
    ) -> None:
        """``library``: the C core the native server loads (PYECHO_LIBRARY);
        a native variant (``native-<label>``) needs one. ``use_proc``: read
        the figures from /proc (default: where there is one) or ask the
        server (its getrusage()) and ``ps``."""
        if base_server(name) not in SERVERS:
            raise ValueError(f"unknown server {name!r}; one of {', '.join(SERVERS)}")
        if (library is not None) != name.startswith(VARIANT_PREFIX):
            raise ValueError(f"a library is for a native variant ({VARIANT_PREFIX}<label>) only")
        if transport not in TRANSPORTS:
            raise ValueError(f"unknown transport {transport!r}; one of {', '.join(TRANSPORTS)}")
        self.use_proc = HAVE_PROC if use_proc is None else use_proc
        if name == "floor" and not self.use_proc:
            raise ValueError("the floor servers report their figures through /proc only")
        self.name = name
        self.mode = mode
        self.transport = transport
        self.host = host
        self._stderr: list[str] = []
        env = {**os.environ, **(STEADY_MALLOC_ENV if steady_malloc else {})}
        if library is not None:
            env["PYECHO_LIBRARY"] = str(library)
        self.proc = subprocess.Popen(
            _command(name, mode, transport, host),
            # -m puts the working directory first on sys.path: run from the
            # folder holding the very pyecho package this process imported.
            cwd=PACKAGE_PARENT,
            env=env,
            # Its stdin: EOF when this process is gone (the server then exits,
            # where no PR_SET_PDEATHSIG does it), and "usage" requests.
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.pid = self.proc.pid
        self.port = self._read_port()
        self._drainer = threading.Thread(target=self._drain_stderr, daemon=True)
        self._drainer.start()

    def _readline(self, timeout: float) -> str:
        """A line of the server's stdout, or "" if none came in time."""
        result: list[str] = []
        reader = threading.Thread(
            target=lambda: result.append(self.proc.stdout.readline()),  # type: ignore[union-attr]
            daemon=True,
        )
        reader.start()
        reader.join(timeout)
        return result[0] if result else ""

    def _read_port(self) -> int:
        line = self._readline(START_TIMEOUT)
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

    def usage(self) -> tuple[float, float, int]:
        """(user, system) CPU seconds of every thread and ru_maxrss (bytes), as
        the server's own getrusage() says (pyecho.bench.serve answers "usage"
        on its stdin)."""
        if self.name == "floor":
            raise ValueError("the floor servers do not answer usage requests")
        assert self.proc.stdin is not None
        self.proc.stdin.write("usage\n")
        self.proc.stdin.flush()
        line = self._readline(START_TIMEOUT)
        if not line.startswith("USAGE "):
            self.check_alive()
            raise RuntimeError(f"server {self.name} did not report its usage: {line!r}")
        user, system, maxrss = line.split()[1:4]
        return float(user), float(system), int(maxrss) * MAXRSS_UNIT

    def cpu_times(self) -> tuple[float, float]:
        """(user, system) CPU seconds of every thread: /proc/<pid>/stat, or
        the server's getrusage()."""
        if not self.use_proc:
            user, system, _ = self.usage()
            return user, system
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
        """Resident set size now, bytes (VmRSS, or what ps says)."""
        if not self.use_proc:
            out = subprocess.run(
                ["ps", "-o", "rss=", "-p", str(self.pid)],
                capture_output=True,
                text=True,
                timeout=30,
                # Not the servers' preloads (tools/sanitize.sh preloads ASan,
                # under which ps hung for the whole timeout).
                env={k: v for k, v in os.environ.items() if k != "LD_PRELOAD"},
            )
            if out.returncode != 0 or not out.stdout.strip().isdigit():
                raise RuntimeError(f"ps gave no resident size for {self.pid}: {out.stderr}")
            return int(out.stdout) * 1024  # KiB (POSIX)
        return self.status_kib("VmRSS") * 1024

    def peak_rss(self) -> int | None:
        """Peak resident set size, bytes (VmHWM); None without /proc: the
        server's own ru_maxrss is no substitute, as Linux at least carries
        the launching process's peak over into it across fork and exec."""
        if not self.use_proc:
            return None
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
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
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
