"""The native engine: the C core (csrc/) loaded through cffi in ABI mode.

The declarations come from the installed copy of csrc/pyecho.h, the one
source of truth, so importing needs no compiler. cffi releases the GIL for
every call into the library, so Python threads run while the server serves.
Set PYECHO_LIBRARY to load another build of the library (a sanitizer build,
say) instead of the installed one.
"""

from __future__ import annotations

import errno
import os
import ssl
import sys
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._config import (
    CLOSE_REASONS,
    DROP_REASONS,
    EVENT_KINDS,
    MODES,
    TRANSPORTS,
    Config,
    Event,
    Stats,
    to_ms,
)
from ._errors import SHOWN, UDP_MAX, peek_surplus, tcp_surplus, udp_mismatch
from ._faults import FaultsInts
from ._signals import SignalsDeferred
from ._tls import TlsFiles, alpn_wire
from ._tlsclient import NativeTlsSpec, tls_error


def library_name(platform: str = sys.platform, stem: str = "libpyecho_core") -> str:
    """A library's file name where CMake builds it (the C core's by default):
    a Mach-O dylib on macOS, a shared object elsewhere."""
    return stem + (".dylib" if platform == "darwin" else ".so")


LIBRARY_NAME = library_name()
HEADER_NAME = "pyecho.h"


def _installed(name: str, package_name: str = __package__) -> Path:
    """A file installed into the package (pyecho, or pyecho.bench). An
    editable install keeps the built files apart from the sources, both on
    the package's __path__."""
    package = sys.modules[package_name]
    for folder in package.__path__:
        path = Path(folder) / name
        if path.exists():
            return path
    return Path(package.__path__[0]) / name


EINTR = errno.EINTR
EPROTO = errno.EPROTO
EBADMSG = errno.EBADMSG  # a TLS failure (echo_client_tls_error says which)


class NativeUnavailableError(ImportError):
    """The C core is not built or cannot be loaded."""


def _checkout_hint() -> str | None:
    """Advice when pyecho was imported from its source checkout, which holds
    no built library: after `pip install .`, running from the repository root
    imports the checkout, and "run `pip install .`" would send the user in a
    circle. None when this is not a checkout or PYECHO_LIBRARY chose the file."""
    package = Path(__file__).resolve().parent
    root = package.parent
    if os.environ.get("PYECHO_LIBRARY") or not (
        (root / "pyproject.toml").is_file() and (root / "csrc").is_dir()
    ):
        return None
    return (
        f"You are importing the source checkout at {package} (no built library there): "
        "run from another folder, or install it editable with `pip install -e .`"
    )


def _load() -> tuple[Any, Any]:
    try:
        from cffi import FFI  # type: ignore[import-untyped, unused-ignore]
    except ImportError as e:  # pragma: no cover - cffi is a dependency
        raise NativeUnavailableError(f"cffi is not installed ({e})") from e
    library = Path(os.environ.get("PYECHO_LIBRARY") or _installed(LIBRARY_NAME))
    header_file = _installed(HEADER_NAME)
    if not header_file.exists() or not library.exists():
        hint = _checkout_hint()
        if hint is None and not header_file.exists() and "PYECHO_LIBRARY" not in os.environ:
            # The pure-Python wheel (PYECHO_PUREPYTHON=1, Windows, or the
            # fallback after a failed C build: pyproject.toml) has neither file.
            raise NativeUnavailableError(
                "this pyecho is a pure-Python install, without its native engine (the C "
                "build was skipped or failed when it was installed; `pip install -v` shows "
                "why). To get it: install a C compiler and CMake, then `pip install "
                "--no-cache-dir --force-reinstall pyecho`; or use engine='python'."
            )
        raise NativeUnavailableError(
            f"pyecho's native engine is not built: {library} is missing. "
            + (hint or "Install the package with `pip install .` (it compiles csrc/)")
            + ", or use engine='python'."
        )
    ffi, lib = open_library(FFI(), header_file, library, NativeUnavailableError)
    check_abi(
        ffi, lib, library, "echo", "core", ABI_STRUCTS, "PYECHO_LIBRARY", NativeUnavailableError
    )
    return ffi, lib


def open_library(
    ffi: Any, header_file: Path, library: Path, error: type[ImportError]
) -> tuple[Any, Any]:
    """(ffi, lib): the header's declarations, the library opened (ABI mode)."""
    header = header_file.read_text()
    # cffi takes plain declarations: drop the include guard and #includes.
    ffi.cdef("\n".join(ln for ln in header.splitlines() if not ln.lstrip().startswith("#")))
    try:
        return ffi, ffi.dlopen(str(library))
    except OSError as e:
        raise error(f"cannot load {library}: {e}") from e


# The structs csrc/abi.c reports on: their layout is what a mismatched
# build would get wrong silently.
ABI_STRUCTS = (
    "echo_config",
    "echo_stats",
    "echo_event",
    "echo_faults",
    "echo_tls_config",
    "echo_tls_client_config",
    "echo_tls_error",
)


def check_abi(
    ffi: Any,
    lib: Any,
    library: Path,
    prefix: str,
    what: str,
    structs: tuple[str, ...],
    env: str,
    error: type[ImportError],
) -> None:
    """Refuse a library built from another header than the one read: its
    {prefix}_abi_version() must be the header's {PREFIX}_ABI_VERSION, and
    {prefix}_abi_sizeof() must agree with the header on every struct. what:
    the library's name in messages ("core", "load generator")."""
    built_for = "ABI version" if prefix == "echo" else f"{what} ABI version"
    rebuild = f"rebuild it (pip install .) or unset {env}"
    try:
        version = getattr(lib, f"{prefix}_abi_version")()
    except AttributeError:
        raise error(
            f"{library} is not a pyecho {what} library of this version "
            f"(it has no {prefix}_abi_version); {rebuild}"
        ) from None
    expected_version = getattr(lib, f"{prefix.upper()}_ABI_VERSION")
    if version != expected_version:
        raise error(
            f"{library} was built for {built_for} {version}, this pyecho needs "
            f"{expected_version}; {rebuild}"
        )
    sizeof = getattr(lib, f"{prefix}_abi_sizeof")
    for name in structs:
        built, expected = sizeof(name.encode()), ffi.sizeof(name)
        if built != expected:
            raise error(
                f"{library} disagrees with its header on {name} ({built} bytes, the header "
                f"says {expected}); {rebuild}"
            )


_loaded: tuple[Any, Any] | None = None
_load_error: NativeUnavailableError | None = None


def load() -> tuple[Any, Any]:
    """(ffi, lib), loaded once; NativeUnavailableError if it cannot be."""
    global _loaded, _load_error
    if _loaded is None:
        if _load_error is not None:
            raise _load_error
        try:
            _loaded = _load()
        except NativeUnavailableError as e:
            _load_error = e
            raise
    return _loaded


def available() -> bool:
    try:
        load()
    except NativeUnavailableError:
        return False
    return True


def tls_available() -> bool:
    """Was the C core built with OpenSSL (TLS)?"""
    try:
        _, lib = load()
    except NativeUnavailableError:
        return False
    return bool(lib.echo_tls_available())


def check_tls() -> None:
    """NativeUnavailableError, saying why and what to do, if the C core
    cannot speak TLS."""
    ffi, lib = load()
    if not lib.echo_tls_available():
        raise NativeUnavailableError(
            "the native engine cannot speak TLS: its library was "
            f"{ffi.string(lib.echo_tls_version()).decode()}. Install OpenSSL's headers "
            "(libssl-dev, openssl-devel) and reinstall pyecho, or use engine='python'."
        )


def _check(rc: int) -> int:
    if rc < 0:
        raise OSError(-rc, os.strerror(-rc))
    return rc


def _release_server(ffi: Any, lib: Any, srv: Any) -> None:
    lib.echo_server_set_event_fn(srv, ffi.NULL, ffi.NULL)
    lib.echo_server_free(srv)


@dataclass(frozen=True)
class CField:
    """Where a setting goes in csrc/pyecho.h's echo_config, and how."""

    name: str
    to_c: Callable[[Any], int]
    from_c: Callable[[int], Any]


# One entry per setting of Config (tests/test_contract.py checks that), but
# quit_word, which is a pointer and a length (quit_word, quit_len).
C_FIELDS: dict[str, CField] = {
    "transport": CField("transport", TRANSPORTS.index, TRANSPORTS.__getitem__),
    "mode": CField("mode", MODES.index, MODES.__getitem__),
    "bufsize": CField("bufsize", int, int),
    "max_line": CField("max_line", int, int),
    "max_pending": CField("max_pending", int, int),
    "max_clients": CField("max_clients", int, int),
    "idle_timeout": CField("idle_timeout_ms", to_ms, lambda ms: ms / 1000),
    "backlog": CField("backlog", int, int),
    "udp_guard": CField("udp_guard", int, bool),
    "udp_rate": CField("udp_rate", int, int),
    "udp_rate_per_source": CField("udp_rate_per_source", int, int),
    "udp_loop_limit": CField("udp_loop_limit", int, int),
}


class _CConfig:
    """A C echo_config for a Config, keeping the quit word's buffer alive."""

    def __init__(self, cfg: Config) -> None:
        ffi, lib = load()
        self.struct = c = ffi.new("echo_config *")
        lib.echo_config_default(c)
        for name, cf in C_FIELDS.items():
            setattr(c, cf.name, cf.to_c(getattr(cfg, name)))
        if cfg.quit_word is None:
            c.quit_word = ffi.NULL
            c.quit_len = 0
        else:
            self._quit = ffi.new("uint8_t[]", cfg.quit_word)
            c.quit_word = self._quit
            c.quit_len = len(cfg.quit_word)
        _check(lib.echo_config_check(c))


def config_from_c(c: Any) -> Config:
    """The Config an echo_config holds (what echo_config_default() says, say)."""
    ffi, _ = load()
    quit_word = None if c.quit_word == ffi.NULL else ffi.buffer(c.quit_word, c.quit_len)[:]
    fields = {name: cf.from_c(getattr(c, cf.name)) for name, cf in C_FIELDS.items()}
    return Config(quit_word=quit_word, **fields)


class NativeServer:
    """Same interface as _pyengine.PyServer, over echo_server."""

    def __init__(
        self,
        cfg: Config,
        family: int,
        host: str,
        port: int,
        on_event: Callable[[Event], None] | None,
    ) -> None:
        self._ffi, self._lib = ffi, lib = load()
        self.cfg = cfg
        ccfg = _CConfig(cfg)
        out = ffi.new("echo_server **")
        _check(lib.echo_server_new(ccfg.struct, host.encode(), port, out))
        self._srv = out[0]
        # Dropped without free(): close its sockets anyway, as the Python
        # engine's socket objects do, with no events from a half-gone object.
        self._finalizer = weakref.finalize(self, _release_server, ffi, lib, self._srv)
        # Not at exit: a daemon thread may still be serving with it then.
        self._finalizer.atexit = False
        self._callback = None
        self._callback_error: BaseException | None = None
        if on_event is not None:
            self._callback = ffi.callback(
                "echo_event_fn", self._event_trampoline(on_event), onerror=self._on_callback_error
            )
            lib.echo_server_set_event_fn(self._srv, self._callback, ffi.NULL)

    def _event_trampoline(self, on_event: Callable[[Event], None]) -> Callable[[Any, Any], None]:
        ffi = self._ffi

        def trampoline(_ctx: Any, ev: Any) -> None:
            kind = EVENT_KINDS[ev.kind]
            reason = (
                None
                if kind == "open"
                else (CLOSE_REASONS if kind == "close" else DROP_REASONS)[ev.reason]
            )
            peer = (ffi.string(ev.host).decode(), ev.port)
            on_event(Event(kind, ev.conn_id, peer, reason, ev.count))

        return trampoline

    def _on_callback_error(self, _type: Any, error: BaseException, _tb: Any) -> None:
        """An exception cannot cross the C loop (a KeyboardInterrupt landing
        in a callback, say): stop serving and raise it from run()."""
        if self._callback_error is None:
            self._callback_error = error
            self._lib.echo_server_stop(self._srv)

    def address(self) -> tuple[str, int]:
        host = self._ffi.new("char[64]")  # NET_HOSTLEN (csrc/net.h)
        port = self._ffi.new("int *")
        _check(self._lib.echo_server_address(self._srv, host, 64, port))
        return self._ffi.string(host).decode(), port[0]

    def run(self, timeout: float | None) -> int:
        ms = -1 if timeout is None else max(0, round(timeout * 1000))
        # A signal that interrupts the loop's wait makes it return at once;
        # one that lands while it is busy waits for the end of this run (at
        # most timeout: serve_forever's poll_interval).
        with SignalsDeferred():
            rc = self._lib.echo_server_run(self._srv, ms)
        if self._callback_error is not None:
            error, self._callback_error = self._callback_error, None
            raise error
        if rc == -EINTR:
            return 1  # a signal: Python runs its handler, then the caller runs us again
        return _check(rc)

    def stop(self) -> None:
        _check(self._lib.echo_server_stop(self._srv))

    def stats(self) -> Stats:
        s = self._ffi.new("echo_stats *")
        self._lib.echo_server_stats(self._srv, s)
        return Stats(
            accepted=s.accepted,
            open=s.open,
            rejected=s.rejected,
            bytes_in=s.bytes_in,
            bytes_out=s.bytes_out,
            closed={r: s.closed[i] for i, r in enumerate(CLOSE_REASONS)},
            datagrams_in=s.datagrams_in,
            datagrams_out=s.datagrams_out,
            dropped={r: s.dropped[i] for i, r in enumerate(DROP_REASONS)},
        )

    def set_faults(self, faults: FaultsInts | None) -> None:
        f = self._ffi.NULL
        if faults is not None:
            f = self._ffi.new("echo_faults *")
            for name, value in faults._asdict().items():
                setattr(f, name, value)
        _check(self._lib.echo_server_set_faults(self._srv, f))

    def set_tls(self, files: TlsFiles) -> None:
        check_tls()
        ffi, lib = self._ffi, self._lib
        keep = [
            ffi.new("char[]", files.certfile.encode()),
            ffi.new("char[]", files.keyfile.encode()),
            ffi.new("char[]", (files.cafile or "").encode()),
            ffi.new("uint8_t[]", alpn_wire(files.alpn) or b"\0"),
        ]
        t = ffi.new("echo_tls_config *")
        t.certfile, t.keyfile = keep[0], keep[1]
        t.cafile = keep[2] if files.cafile is not None else ffi.NULL
        t.client_cert = files.client_cert
        t.min_version = files.min_version
        t.max_version = files.max_version
        t.alpn = keep[3] if files.alpn else ffi.NULL
        t.alpn_len = len(alpn_wire(files.alpn))
        rc = lib.echo_server_set_tls(self._srv, t)
        if rc < 0:
            reason = ffi.string(lib.echo_server_tls_error(self._srv)).decode()
            if rc == -errno.EINVAL:
                raise ValueError(f"the native engine refused the TLS settings: {reason}")
            raise OSError(-rc, f"{os.strerror(-rc)}: {reason}" if reason else os.strerror(-rc))

    def free(self) -> None:
        if self._srv is not None:
            self._finalizer.detach()
            self._lib.echo_server_free(self._srv)
            self._srv = None


class NativeClient:
    """Same interface as _pyengine.PyClient, over echo_client."""

    def __init__(
        self,
        cfg: Config,
        family: int,
        host: str,
        port: int,
        timeout: float | None,
        *,
        tls: NativeTlsSpec | None = None,
    ) -> None:
        self._ffi, self._lib = ffi, lib = load()
        self.cfg = cfg
        self._timeout_ms = self._ms(timeout)
        ccfg = _CConfig(cfg)
        out = ffi.new("echo_client **")
        while True:
            rc = lib.echo_client_new(ccfg.struct, host.encode(), port, self._timeout_ms, out)
            if rc != -EINTR:  # on a signal, Python runs its handler, then we retry
                break
        _check(rc)
        self._cli = out[0]
        self._finalizer = weakref.finalize(self, lib.echo_client_free, self._cli)
        self._finalizer.atexit = False  # the process is ending: the OS closes it
        self._got = ffi.new("size_t *")
        self._udp = cfg.transport == "udp"
        self._tls = tls
        if tls is not None:
            try:
                self._start_tls(tls)
            except BaseException:
                self.close()
                raise

    def _start_tls(self, spec: NativeTlsSpec) -> None:
        """The TLS handshake, with the context Python's ssl would build."""
        check_tls()
        ffi, lib = self._ffi, self._lib
        alpn = alpn_wire(spec.alpn)
        keep = [
            ffi.new("char[]", spec.server_hostname.encode("idna")),
            ffi.new("char[]", spec.ca_pem or b"\0"),
            ffi.new("uint8_t[]", alpn or b"\0"),
        ]

        def text(value: str | None) -> Any:
            if value is None:
                return ffi.NULL
            keep.append(ffi.new("char[]", os.fsencode(value)))
            return keep[-1]

        def pem(value: bytes | None) -> tuple[Any, int]:
            if value is None:
                return ffi.NULL, 0
            keep.append(ffi.from_buffer(value))
            return keep[-1], len(value)

        t = ffi.new("echo_tls_client_config *")
        t.server_hostname = keep[0]
        t.verify, t.check_hostname = spec.verify, spec.check_hostname
        t.check_common_name = spec.check_common_name
        t.ca_pem, t.ca_pem_len = (keep[1], len(spec.ca_pem)) if spec.ca_pem else (ffi.NULL, 0)
        t.capath, t.default_paths = text(spec.capath), spec.default_paths
        t.cert_pem, t.cert_pem_len = pem(spec.cert_pem)
        t.key_pem, t.key_pem_len = pem(spec.key_pem)
        t.ciphers = text(spec.ciphers)
        t.min_version, t.max_version = spec.min_version, spec.max_version
        t.options, t.verify_flags = spec.options, spec.verify_flags
        t.alpn, t.alpn_len = (keep[2], len(alpn)) if alpn else (ffi.NULL, 0)
        rc = lib.echo_client_start_tls(self._cli, t)
        if rc == -EBADMSG:  # a server name OpenSSL refuses, as ssl's wrap_socket()
            raise self._tls_failure()
        if rc < 0:
            why = self._tls_why()  # held: .reason points into it
            reason = self._ffi.string(why.reason).decode(errors="replace") or os.strerror(-rc)
            if rc == -errno.EINVAL:
                raise ValueError(f"the native client refused the TLS settings: {reason}")
            raise OSError(-rc, f"{os.strerror(-rc)}: {reason}")
        self._call(lib.echo_client_handshake)

    def _tls_why(self) -> Any:
        """The C client's last TLS failure (echo_tls_error; zeros if none)."""
        e = self._ffi.new("echo_tls_error *")
        self._lib.echo_client_tls_error(self._cli, e)
        return e

    def _tls_failure(self) -> ssl.SSLError:
        """That failure as the exception Python's ssl raises for it."""
        e = self._tls_why()
        assert self._tls is not None
        return tls_error(
            self._ffi.string(e.library).decode(errors="replace"),
            self._ffi.string(e.reason).decode(errors="replace"),
            self._ffi.string(e.verify).decode(errors="replace"),
            int(e.verify_code),
            bool(e.eof),
            self._tls.server_hostname,
        )

    @staticmethod
    def _ms(timeout: float | None) -> int:
        return -1 if timeout is None else max(0, round(timeout * 1000))

    @property
    def timeout(self) -> float | None:
        return None if self._timeout_ms < 0 else self._timeout_ms / 1000

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._timeout_ms = self._ms(value)
        _check(self._lib.echo_client_set_timeout(self._cli, self._timeout_ms))

    def _call(self, fn: Callable[..., int], *args: Any) -> int:
        """Call fn, resuming it after each signal once Python ran its handler."""
        return self._checked(self._call_rc(fn, *args))

    def _checked(self, rc: int) -> int:
        """rc, or its exception: a TLS failure as Python's ssl raises it."""
        if rc == -EBADMSG and self._tls is not None:
            raise self._tls_failure()
        return _check(rc)

    def _call_rc(self, fn: Callable[..., int], *args: Any) -> int:
        """fn's result, resuming it after each signal once Python ran its handler."""
        while True:
            rc = fn(self._cli, *args)
            if rc != -EINTR:
                return int(rc)

    def send(self, data: bytes) -> None:
        self._call(self._lib.echo_client_send, self._ffi.from_buffer(data), len(data))

    def recv(self, bufsize: int) -> bytes:
        buf = self._ffi.new("uint8_t[]", bufsize)
        self._call(self._lib.echo_client_recv, buf, bufsize, self._got)
        return bytes(self._ffi.buffer(buf, self._got[0]))

    def recv_nowait(self, bufsize: int) -> bytes | None:
        """Up to bufsize bytes if there are any now; None when what made the
        socket readable carried no data (TLS session tickets, say)."""
        timeout, self.timeout = self.timeout, 0
        try:
            return self.recv(bufsize)
        except TimeoutError:
            return None
        finally:
            self.timeout = timeout

    def echo(self, data: bytes) -> tuple[bytes, int]:
        cap = self._lib.echo_client_reply_room(self._cli, len(data))
        if self._udp:
            cap = UDP_MAX  # a wrong answer is seen whole, for the error to show
        reply = self._ffi.new("uint8_t[]", cap)
        rc = self._call_rc(
            self._lib.echo_client_echo,
            self._ffi.from_buffer(data),
            len(data),
            reply,
            cap,
            self._got,
        )
        got = self._ffi.buffer(reply, self._got[0])[:]
        if rc == -EPROTO:  # say what was expected and what came
            if self._udp:
                raise udp_mismatch(data, got)
            raise tcp_surplus(len(got), got, self._surplus())
        return got, self._checked(rc)

    def _surplus(self) -> bytes:
        """The bytes beyond the echo: over TLS the client took them (they
        cannot be left in the socket), over TCP they wait there."""
        if self._tls is None:
            return peek_surplus(self.fileno())
        buf = self._ffi.new("uint8_t[]", SHOWN)
        n = self._lib.echo_client_surplus(self._cli, buf, SHOWN)
        return bytes(self._ffi.buffer(buf, n))

    @property
    def quit_sent(self) -> bool:
        return bool(self._lib.echo_client_quit_sent(self._cli))

    def shutdown_write(self) -> None:
        _check(self._lib.echo_client_shutdown_write(self._cli))

    def tls_session(self) -> tuple[str, str | None] | None:
        if self._tls is None:
            return None
        version, alpn = self._ffi.new("char[]", 32), self._ffi.new("char[]", 256)
        _check(self._lib.echo_client_tls_info(self._cli, version, 32, alpn, 256))
        protocol = self._ffi.string(alpn).decode("ascii", errors="replace")
        return self._ffi.string(version).decode(), protocol or None

    def fileno(self) -> int:
        return int(self._lib.echo_client_fileno(self._cli))

    def close(self) -> None:
        if self._cli is not None:
            self._finalizer()  # echo_client_free, once
            self._cli = None
