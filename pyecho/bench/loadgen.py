"""The C load generator (csrc/loadgen.c, csrc/loadgen_udp.c) through cffi.

It is the benchmark's own library, libpyecho_loadgen, installed beside this
module with its header pyecho_loadgen.h (the declarations cffi reads): the
product library, libpyecho_core, exports the echo API only. Set
PYECHO_LOADGEN_LIBRARY to load another build of it (a sanitizer build, say).

The call into C releases the GIL and runs the whole closed loop there, so
what is measured is the server, not Python. Every echoed byte is verified: a
wrong byte, an extra byte or an early close raises :class:`LoadGenError`.
Over UDP a wrong byte or size, or a datagram echoed twice, raises it too; a
datagram not echoed within ``loss_timeout`` is counted in
:attr:`RunResult.lost`.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from .._native import NativeUnavailableError, check_abi, library_name, open_library
from .._native import _installed as _native_installed

LIBRARY_NAME = library_name(stem="libpyecho_loadgen")
HEADER_NAME = "pyecho_loadgen.h"
LIBRARY_ENV = "PYECHO_LOADGEN_LIBRARY"
# The structs the library reports the size of (echo_loadgen_abi_sizeof).
ABI_STRUCTS = ("echo_loadgen_config", "echo_loadgen_result")


class LoadGenUnavailableError(NativeUnavailableError):
    """The load generator's library is not built or cannot be loaded."""


def _installed(name: str) -> Path:
    """A file installed into pyecho.bench."""
    return _native_installed(name, __package__)


def _load() -> tuple[Any, Any]:
    try:
        from cffi import FFI  # type: ignore[import-untyped, unused-ignore]
    except ImportError as e:  # pragma: no cover - cffi is a dependency
        raise LoadGenUnavailableError(f"cffi is not installed ({e})") from e
    library = Path(os.environ.get(LIBRARY_ENV) or _installed(LIBRARY_NAME))
    header_file = _installed(HEADER_NAME)
    if not header_file.exists() or not library.exists():
        raise LoadGenUnavailableError(
            f"the benchmark's load generator is not built: {library} is missing. "
            "Install pyecho with `pip install .` (or `pip install -e .` from a clone): "
            "it compiles csrc/ into the core and the load generator."
        )
    ffi, lib = open_library(FFI(), header_file, library, LoadGenUnavailableError)
    check_abi(
        ffi,
        lib,
        library,
        "echo_loadgen",
        "load generator",
        ABI_STRUCTS,
        LIBRARY_ENV,
        LoadGenUnavailableError,
    )
    return ffi, lib


_loaded: tuple[Any, Any] | None = None


def load() -> tuple[Any, Any]:
    """(ffi, lib) of the load generator's library, loaded once;
    LoadGenUnavailableError if it cannot be."""
    global _loaded
    if _loaded is None:
        _loaded = _load()
    return _loaded


MODES = {"raw": 0, "line": 1, "seed": 2}
TRANSPORTS = {"tcp": 0, "udp": 1}
UNKNOWN = 2**64 - 1  # error_datagram when the datagram's number is unknown
ERROR_KINDS = ("ok", "connect", "mismatch", "closed", "io", "timeout", "extra", "usage")


class LoadGenError(RuntimeError):
    """The load generator found the server at fault or could not run."""

    def __init__(
        self,
        rc: int,
        kind: str,
        conn: int,
        offset: int,
        detail: str = "",
        *,
        transport: str = "tcp",
        datagram: int | None = None,
        size: int | None = None,
    ) -> None:
        self.errno = -rc
        self.kind = kind
        self.conn = conn
        self.offset = offset
        self.transport = transport
        self.datagram = datagram  # UDP: the datagram's sequence number, if known
        self.size = size  # UDP: its size
        what = {
            "connect": "could not open a connection",
            "mismatch": "an echoed byte differs from the byte sent",
            "closed": "the server closed a connection early",
            "io": "a socket call failed",
            "timeout": "no progress for the timeout",
            "extra": "the server sent more bytes than it was sent",
            "usage": "bad argument or call order",
        }.get(kind, kind)
        if transport == "udp":
            what = {
                "mismatch": "an echoed datagram differs from the one sent",
                "closed": "the server's port refused a datagram",
                "extra": "a datagram was echoed twice",
            }.get(kind, what)
            where = f"socket {conn}"
            if datagram is not None:
                where += f", datagram {datagram}"
            if kind == "mismatch":
                where += f", byte {offset} of {size}"
        else:
            where = f"connection {conn}, stream offset {offset}"
        msg = f"load generator: {what} ({where}{detail}): {os.strerror(-rc)}"
        if kind == "connect" and -rc in (errno.EMFILE, errno.ENFILE):
            msg += " - raise the open-file limit (ulimit -n) or use fewer connections"
        super().__init__(msg)


@dataclass(frozen=True)
class RunResult:
    """One closed-loop run's figures (latencies in nanoseconds)."""

    round_trips: int
    bytes: int
    elapsed_ns: int
    lat_min_ns: int
    lat_mean_ns: int
    lat_p50_ns: int
    lat_p90_ns: int
    lat_p99_ns: int
    lat_p999_ns: int
    lat_max_ns: int
    lost: int = 0  # UDP: datagrams not echoed within the loss timeout
    late: int = 0  # UDP: echoes that came after it (not counted as round trips)

    @property
    def seconds(self) -> float:
        return self.elapsed_ns / 1e9


class LoadGen:
    """``connections`` connections with ``depth`` messages of ``msg_size``
    bytes in flight each, against a server in ``mode`` (messages are made so
    that it echoes them unchanged). With ``transport="udp"``: connected UDP
    sockets, ``depth`` datagrams of ``msg_size`` bytes (8 to 65,507) in
    flight on each, raw mode only."""

    def __init__(
        self,
        connections: int,
        msg_size: int,
        depth: int = 1,
        mode: str = "raw",
        *,
        connect_window: int = 64,
        timeout: float = 10.0,
        transport: str = "tcp",
        loss_timeout: float = 0.5,
    ) -> None:
        self._lg: Any = None
        self._ffi, self._lib = ffi, lib = load()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}; got {transport!r}")
        cfg = ffi.new("echo_loadgen_config *")
        cfg.connections = connections
        cfg.depth = depth
        cfg.msg_size = msg_size
        cfg.mode = MODES[mode]
        cfg.connect_window = connect_window
        cfg.timeout_ms = max(1, round(timeout * 1000))
        cfg.transport = TRANSPORTS[transport]
        cfg.loss_timeout_ms = max(1, round(loss_timeout * 1000))
        out = ffi.new("echo_loadgen **")
        rc = lib.echo_loadgen_new(cfg, out)
        if rc < 0:
            raise OSError(-rc, f"echo_loadgen_new: {os.strerror(-rc)}")
        self._lg = out[0]
        self._res = ffi.new("echo_loadgen_result *")
        self.connections = connections
        self.msg_size = msg_size
        self.depth = depth
        self.mode = mode
        self.transport = transport

    def _raise(self, rc: int) -> None:
        r = self._res
        kind = ERROR_KINDS[r.error_kind] if 0 <= r.error_kind < len(ERROR_KINDS) else "?"
        if rc == -errno.EINTR:
            # A signal arrived: Python runs its handler (KeyboardInterrupt) now.
            raise InterruptedError(errno.EINTR, "load generator interrupted")
        detail = ""
        udp = self.transport == "udp"
        if kind == "mismatch" and not (udp and r.error_size != self.msg_size):
            detail = f", sent 0x{r.error_expected:02x}, echoed 0x{r.error_got:02x}"
        raise LoadGenError(
            rc,
            kind,
            r.error_conn,
            r.error_offset,
            detail,
            transport=self.transport,
            datagram=r.error_datagram if udp and r.error_datagram != UNKNOWN else None,
            size=r.error_size if udp else None,
        )

    def connect(self, host: str, port: int) -> None:
        """Open every connection and do one verified round trip on each."""
        rc = self._lib.echo_loadgen_connect(self._open(), host.encode(), port, self._res)
        if rc < 0:
            self._raise(rc)

    def run(self, seconds: float) -> RunResult:
        """Run the closed loop for ``seconds``, then drain what is in flight."""
        rc = self._lib.echo_loadgen_run(self._open(), max(0, round(seconds * 1000)), self._res)
        if rc < 0:
            self._raise(rc)
        r = self._res
        return RunResult(
            round_trips=r.round_trips,
            bytes=r.bytes,
            elapsed_ns=r.elapsed_ns,
            lat_min_ns=r.lat_min_ns,
            lat_mean_ns=r.lat_mean_ns,
            lat_p50_ns=r.lat_p50_ns,
            lat_p90_ns=r.lat_p90_ns,
            lat_p99_ns=r.lat_p99_ns,
            lat_p999_ns=r.lat_p999_ns,
            lat_max_ns=r.lat_max_ns,
            lost=r.lost,
            late=r.late,
        )

    @property
    def open_connections(self) -> int:
        return int(self._lib.echo_loadgen_open(self._open()))

    def _open(self) -> Any:
        if self._lg is None:
            raise ValueError("the load generator is closed")
        return self._lg

    def close(self) -> None:
        lg, self._lg = self._lg, None
        if lg is not None:
            self._lib.echo_loadgen_free(lg)

    def __enter__(self) -> LoadGen:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()
