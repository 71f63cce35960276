"""The one API over both engines, in the shape of ``socketserver``.

``engine="native"`` runs the C core (csrc/), ``engine="python"`` the
pure-Python reference (pyecho/_pyengine.py); both behave identically, which
tests/ checks scenario by scenario. ``engine="auto"``, the default, runs the
native engine where its library loads, else the Python engine
(pyecho/_auto.py); ``.engine`` says which one runs.
"""

from __future__ import annotations

import errno
import functools
import socket
import ssl
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

from . import _auto, _native, _pyengine
from ._config import (
    DEFAULT_ENGINE,
    DEFAULT_HOST,
    DEFAULT_PORT,
    DEFAULTS,
    REPLY_OPEN,
    REPLY_SHORT,
    TIMEOUT,
    ConnectionClosedError,
    Event,
    Stats,
    _int,
    check_data,
    check_engine,
    check_timeout,
    hostport,
    make_config,
    resolve,
)
from ._engine import ClientEngine, ClientFactory, EventHandler, ServerEngine, ServerFactory
from ._faults import Faults, faults_ints
from ._native import NativeUnavailableError
from ._tls import TLS, ServerTLS, check_tls
from ._tlsclient import client_context, native_spec

# Longest a signal (Ctrl+C) can wait while the server is busy; an idle
# server handles it at once.
POLL_INTERVAL = 0.1

_T = TypeVar("_T")


def _at(error: OSError, host: str, port: int) -> OSError:
    """error naming the address it happened at, as an OSError names its file:
    ``[Errno 99] Cannot assign requested address: '[::1]:12345'``. The same
    class, errno and strerror (pyecho.cli explains it by those)."""
    if error.errno is None or error.filename is not None:
        return error
    if isinstance(error, (TimeoutError, socket.gaierror, ssl.SSLError)):
        return error  # a message of its own, naming the server or the host
    named = OSError(error.errno, error.strerror, hostport(host, port))
    return named.with_traceback(error.__traceback__)


def _engine_classes(engine: str) -> tuple[str, ServerFactory, ClientFactory]:
    """The engine that runs for ``engine`` ("auto" resolved) and its classes;
    NativeUnavailableError, with what to do about it, for a native engine
    asked for that cannot load."""
    running, _ = _auto.choose(check_engine(engine))
    if running == "native":
        return running, _native.NativeServer, _native.NativeClient
    return running, _pyengine.PyServer, _pyengine.PyClient


class EchoServer:
    """An echo server listening on ``server_address`` from construction on.

    >>> with EchoServer(("127.0.0.1", 0), mode="line").start() as server:
    ...     host, port = server.server_address

    ``server_address`` is bound at once (a name: its first address; "::" is
    dual stack, "" every IPv4 interface: docs/PROTOCOL.md, "Addresses"), and
    ``.server_address`` is then the numeric address bound, the port chosen
    for port 0.

    ``serve_forever()`` serves on the calling thread until ``shutdown()``;
    ``start()`` does it on a background thread. The settings are those of
    docs/PROTOCOL.md; ``max_clients`` and ``idle_timeout`` of 0 or None mean
    no limit, ``quit_word=None`` no quit word.

    ``on_event`` is called on the serving thread with an :class:`Event` when a
    connection opens or closes. If it raises, the server stops and closes
    (every client connection and the listening socket: new clients are
    refused), and the error is raised by ``serve_forever()``, or, under
    ``start()``, by the next call on the server (``close()``, ``shutdown()``,
    ``stats``, leaving the ``with`` block).
    """

    def __init__(
        self,
        server_address: tuple[str, int] = (DEFAULT_HOST, DEFAULT_PORT),
        *,
        engine: str = DEFAULT_ENGINE,
        transport: str = DEFAULTS.transport,
        mode: str = DEFAULTS.mode,
        quit_word: bytes | str | None = DEFAULTS.quit_word,
        bufsize: int = DEFAULTS.bufsize,
        max_line: int = DEFAULTS.max_line,
        max_pending: int = DEFAULTS.max_pending,
        max_clients: int | None = DEFAULTS.max_clients,
        idle_timeout: float | None = DEFAULTS.idle_timeout,
        backlog: int = DEFAULTS.backlog,
        udp_guard: bool = DEFAULTS.udp_guard,
        udp_rate: int | None = DEFAULTS.udp_rate,
        udp_rate_per_source: int | None = DEFAULTS.udp_rate_per_source,
        udp_loop_limit: int | None = DEFAULTS.udp_loop_limit,
        faults: Faults | None = None,
        on_event: EventHandler | None = None,
        tls: bool | TLS | None = None,
    ) -> None:
        if on_event is not None and not callable(on_event):
            raise TypeError("on_event must be callable or None")
        self.config = make_config(
            transport=transport,
            mode=mode,
            quit_word=quit_word,
            bufsize=bufsize,
            max_line=max_line,
            max_pending=max_pending,
            max_clients=max_clients,
            idle_timeout=idle_timeout,
            backlog=backlog,
            udp_guard=udp_guard,
            udp_rate=udp_rate,
            udp_rate_per_source=udp_rate_per_source,
            udp_loop_limit=udp_loop_limit,
        )
        tls_settings = check_tls(tls)
        if tls_settings is not None and transport != "tcp":
            raise ValueError("tls does not apply to UDP: TLS runs over TCP (DTLS is not served)")
        self._tls_on = tls_settings is not None
        faults = self._check_faults(faults)
        running, server_cls, _ = _engine_classes(engine)
        if tls_settings is not None and running == "native" and not _native.tls_available():
            if check_engine(engine) == "native" or _auto._from_env() == "native":
                _native.check_tls()  # NativeUnavailableError saying why, and what to do
            # "auto" on a native engine without TLS: the Python one serves it.
            running, server_cls, _ = _engine_classes("python")
        family, host, port = resolve(server_address, server=True)[0]
        self.engine = running  # the engine actually running ("auto" resolved)
        self.transport = transport
        self.mode = mode if transport == "tcp" else "datagram"
        self._faults: Faults | None = None
        self._user_on_event = on_event
        # An on_event error not yet raised, and whether the session it
        # happened in must close the server.
        self._error: BaseException | None = None
        self._failed = False
        # Guards the life cycle; reentrant, as close events run on_event while
        # close() holds it.
        self._lock = threading.RLock()
        self._serving_thread: threading.Thread | None = None
        self._stop_requested = False
        self._done = threading.Event()
        self._done.set()
        self._thread: threading.Thread | None = None
        # What a client needs to trust the server (server.tls), or None.
        self.tls: ServerTLS | None = None
        if tls_settings is not None:
            self.tls = ServerTLS(tls_settings)
        try:
            self._core: ServerEngine | None = server_cls(
                self.config, family, host, port, None if on_event is None else self._on_event
            )
            if self.tls is not None:
                self._core.set_tls(self.tls.files)
        except OSError as e:
            self._free_tls()
            raise _at(e, host, port) from None
        except BaseException:
            self._free_tls()
            raise
        self.server_address: tuple[str, int] = self._core.address()
        if faults is not None:
            self.set_faults(faults)

    def _check_faults(self, faults: Any) -> Faults | None:
        if faults is not None and not isinstance(faults, Faults):
            raise TypeError(f"faults must be a pyecho.Faults or None, not {type(faults).__name__}")
        if faults is None or not faults.active:
            return None
        if faults.handshake and not self._tls_on:
            raise ValueError(
                "handshake_delay, handshake_stall and handshake_reset act on a TLS "
                "handshake: they need a TLS server (tls=True or tls=pyecho.TLS(...))"
            )
        return faults.check_for(self.config.transport).seeded()

    @property
    def faults(self) -> Faults | None:
        """The faults in effect (with the seed drawn for them, if none was
        given, so a run can be repeated), or None."""
        return self._faults

    def set_faults(self, faults: Faults | None) -> None:
        """Change what the server does to its echo, from any thread, serving
        or not: it applies within one turn of the serving loop, to open
        connections too. None: a plain echo again."""
        faults = self._check_faults(faults)
        with self._lock:
            if self._core is None:
                raise ValueError("set_faults() on a closed server")
            self._core.set_faults(None if faults is None else faults_ints(faults))
            self._faults = faults

    def _on_event(self, event: Event) -> None:
        assert self._user_on_event is not None
        try:
            self._user_on_event(event)
        except BaseException as e:  # noqa: BLE001 - raised by the next call
            with self._lock:
                if self._error is None:
                    self._error = e
                self._failed = True
            self._request_stop()

    def _raise_error(self) -> None:
        """Raise an on_event error not raised yet, once."""
        with self._lock:
            error, self._error = self._error, None
        if error is not None:
            raise error

    def _request_stop(self) -> None:
        """Stop the serving session, once: a second stop would outlive it and
        end the next one at once."""
        with self._lock:
            if (
                self._serving_thread is not None
                and not self._stop_requested
                and self._core is not None
            ):
                self._stop_requested = True
                self._core.stop()

    def serve_forever(self, poll_interval: float = POLL_INTERVAL) -> None:
        """Serve until shutdown(). Signals (Ctrl+C) are handled at least every
        poll_interval seconds, at once when the server is idle: SIGINT's and
        SIGTERM's Python handlers run between turns of the serving loop,
        never inside on_event, so no event is cut short."""
        poll_interval = check_timeout(poll_interval) or POLL_INTERVAL
        self._claim(threading.current_thread())
        self._serve(poll_interval, background=False)

    def start(self) -> EchoServer:
        """Serve on a background (daemon) thread; returns self. The server
        counts as serving from this call on, so a shutdown() right after it
        is never missed."""
        thread = threading.Thread(
            target=self._serve,
            args=(POLL_INTERVAL, True),
            name=f"pyecho-{self.engine}",
            daemon=True,
        )
        self._claim(thread)
        self._thread = thread
        thread.start()
        return self

    def _claim(self, thread: threading.Thread) -> None:
        self._raise_error()
        with self._lock:
            if self._core is None:
                raise ValueError("start() or serve_forever() on a closed server")
            if self._serving_thread is not None:
                raise RuntimeError("the server is already serving")
            self._serving_thread = thread
            self._stop_requested = False
            self._done.clear()

    def _serve(self, poll_interval: float, background: bool) -> None:
        core = self._core  # close() waits for this session to end before it frees it
        assert core is not None
        try:
            while core.run(poll_interval) == 1:
                pass
        except BaseException as e:
            if not background:
                self._end_session(core, take_error=False)
                raise
            # Nobody would see it on this thread: treat it as on_event's.
            with self._lock:
                if self._error is None:
                    self._error = e
                self._failed = True
        error = self._end_session(core, take_error=not background)
        if error is not None:
            raise error

    def _end_session(self, core: ServerEngine, take_error: bool) -> BaseException | None:
        with self._lock:
            if self._failed:  # close, so that new clients are refused, not left waiting
                self._failed = False
                self._core = None
                core.free()
            error = None
            if take_error:  # serve_forever()'s to raise
                error, self._error = self._error, None
            self._serving_thread = None
            self._done.set()
            return error

    def _stop_and_wait(self) -> None:
        with self._lock:
            serving = self._serving_thread
            if serving is None:
                return
            self._request_stop()
            thread, self._thread = self._thread, None
        if serving is not threading.current_thread():
            self._done.wait()
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    def shutdown(self) -> None:
        """Stop serve_forever() and wait for it: every client connection is
        closed (reason "shutdown"). The listening socket stays open until
        close(), unless on_event raised (the error is raised here)."""
        self._stop_and_wait()
        if self._serving_thread is not threading.current_thread():
            self._raise_error()

    def close(self) -> None:
        """shutdown(), then close every socket. Safe to call twice."""
        if self._serving_thread is threading.current_thread():
            raise RuntimeError("close() from the serving thread (on_event): call shutdown()")
        while True:
            self._stop_and_wait()
            with self._lock:  # no start() can come between this check and the free
                if self._serving_thread is not None:
                    continue  # started again meanwhile
                core, self._core = self._core, None
                if core is not None:
                    core.free()
                self._failed = False
                self._free_tls()
                break
        self._raise_error()  # from on_event, for a close event, say

    server_close = close  # socketserver's name

    def _free_tls(self) -> None:
        """Remove the throwaway CA and keys (the private folder they are in)."""
        if self.tls is not None:
            self.tls.close()

    @property
    def stats(self) -> Stats:
        with self._lock:
            if self._serving_thread is None:
                self._raise_error()
            if self._core is None:
                raise ValueError("stats of a closed server")
            return self._core.stats()

    def __enter__(self) -> EchoServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<EchoServer {self.engine} {self.transport} {self.mode} on "
            f"{hostport(*self.server_address)}>"
        )


def check_client_tls(tls: Any) -> ssl.SSLContext | None:
    """A client's tls=: an ssl.SSLContext, True (the system's trusted CAs, as
    ssl.create_default_context()), or None/False."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return client_context()
    if not isinstance(tls, ssl.SSLContext):
        raise TypeError(
            f"tls must be an ssl.SSLContext (server.tls.client_context(), say), True or None, "
            f"not {type(tls).__name__}"
        )
    return tls


def _tls_client(
    engine: str, running: str, context: ssl.SSLContext, hostname: str
) -> tuple[str, ClientFactory]:
    """The engine and client class for a TLS client. The native client
    builds the same context in C when it can read all of context (a
    pyecho.client_context()); otherwise "auto" runs the Python client
    (Python's ssl, with the very context given) and "native" says why not."""
    if running == "native":
        spec = native_spec(context, hostname)
        if isinstance(spec, str) or not _native.tls_available():
            if check_engine(engine) == "native" or _auto._from_env() == "native":
                _native.check_tls()
                raise NativeUnavailableError(f"{spec}, or use engine='python'")
        else:
            return running, functools.partial(_native.NativeClient, tls=spec)
    return "python", functools.partial(
        _pyengine.PyTlsClient, context=context, server_hostname=hostname
    )


class EchoClient:
    """A blocking client for an echo server.

    ``server_address`` is a (host, port) pair; a name's addresses are tried in
    turn, and ``.server_address`` is then the numeric address connected to
    (docs/PROTOCOL.md, "Addresses": "::" and "0.0.0.0" mean loopback here).

    ``echo(data)`` sends data and returns its echo as the server's framing
    produces it (the client runs the same framing to know how much to wait
    for). ``timeout`` bounds each wait for the server, in seconds (default
    10; None waits forever); when it runs out, TimeoutError says which
    server did not answer.

    ``tls`` speaks TLS over TCP: an ``ssl.SSLContext`` (``server.tls.
    client_context()``, say), or True for the system's trusted CAs;
    ``server_hostname`` is the name checked (default: the host given). The
    native client builds the same context in C when it can read all of it:
    a ``pyecho.client_context()`` (``client_context()`` is one); with any
    other context, "auto" runs the Python client. A failed handshake raises
    what Python's ssl raises (``ssl.SSLCertVerificationError``...), from
    either engine.
    """

    def __init__(
        self,
        server_address: tuple[str, int] = (DEFAULT_HOST, DEFAULT_PORT),
        *,
        engine: str = DEFAULT_ENGINE,
        transport: str = DEFAULTS.transport,
        mode: str = DEFAULTS.mode,
        quit_word: bytes | str | None = DEFAULTS.quit_word,
        bufsize: int = DEFAULTS.bufsize,
        max_line: int = DEFAULTS.max_line,
        timeout: float | None = TIMEOUT.default,
        tls: ssl.SSLContext | bool | None = None,
        server_hostname: str | None = None,
    ) -> None:
        self.config = make_config(
            transport=transport, mode=mode, quit_word=quit_word, bufsize=bufsize, max_line=max_line
        )
        running, _, client_cls = _engine_classes(engine)
        tls_context = check_client_tls(tls)
        if tls_context is not None:
            if transport != "tcp":
                raise ValueError("tls does not apply to UDP: TLS runs over TCP")
            running, client_cls = _tls_client(
                engine, running, tls_context, server_hostname or server_address[0] or DEFAULT_HOST
            )
        self.tls = tls_context
        timeout = check_timeout(timeout)
        self.engine = running  # the engine actually running ("auto" resolved)
        self.transport = transport
        self.mode = mode if transport == "tcp" else "datagram"
        self.server_closed = False  # the server closed the connection
        self._broken = False  # an echo() or send() failed part way
        self._core: ClientEngine | None = None
        # Try each address the name has, as socket.create_connection() does.
        error: OSError | None = None
        for family, host, port in resolve(server_address, server=False):
            self.server_address = (host, port)
            try:
                connect = functools.partial(client_cls, self.config, family, host, port, timeout)
                self._core = self._timed("connect", connect, timeout)
            except OSError as e:
                error = _at(e, host, port)
                continue
            return
        assert error is not None
        raise error from None

    def _open(self) -> ClientEngine:
        if self._core is None:
            raise ValueError("I/O on a closed client")
        return self._core

    def _timed(self, what: str, call: Callable[[], _T], timeout: float | None) -> _T:
        """call(), with a TimeoutError that says what the server did not do."""
        try:
            return call()
        except TimeoutError:
            server = f"the server at {hostport(*self.server_address)}"
            if what == "connect":
                message = f"{server} did not accept the connection within {timeout} s"
            elif what == "send":
                message = f"{server} did not take the data within {timeout} s (is it reading?)"
            elif self.transport == "udp":
                message = (
                    f"{server} did not answer within {timeout} s (a datagram or its echo "
                    "may be lost; is a UDP echo server there?)"
                )
            else:
                message = (
                    f"{server} did not answer within {timeout} s (is it in mode {self.mode!r}?)"
                )
            raise TimeoutError(errno.ETIMEDOUT, message) from None

    def _framed(self, what: str, data: bytes, call: Callable[[], _T]) -> _T:
        """Run a call that moves the framing on. If it fails or is interrupted
        part way (a timeout, Ctrl+C), how much was sent and what echo is owed
        is unknown: later echo() and send() refuse rather than guess. Over UDP
        there is no such state: a lost datagram leaves the client usable (the
        next echo() drops late answers before it sends)."""
        core = self._open()
        if self.transport == "udp":
            return self._timed(what, call, core.timeout)
        if data and core.quit_sent:
            raise BrokenPipeError(
                errno.EPIPE, "the quit word was sent: the server is closing this connection"
            )
        if self._broken:
            raise ConnectionError(
                "an earlier echo() or send() failed part way; the connection's "
                "state is unknown: close it"
            )
        try:
            return self._timed(what, call, core.timeout)
        except BaseException:
            self._broken = True
            raise

    @property
    def timeout(self) -> float | None:
        return self._open().timeout

    @timeout.setter
    def timeout(self, value: float | None) -> None:
        self._open().timeout = check_timeout(value)

    def echo(self, data: bytes) -> bytes:
        """Send data and return its echo. After the quit word, waits for the
        server to close and returns what came before it. Raises
        ConnectionClosedError (with ``.partial``) if the server closed the
        connection before the whole echo arrived."""
        data = check_data(data)
        core = self._open()
        reply, status = self._framed("echo", data, lambda: core.echo(data))
        if status != REPLY_OPEN:
            self.server_closed = True
        if status == REPLY_SHORT:
            raise ConnectionClosedError(reply)
        return reply

    def send(self, data: bytes) -> None:
        """Send all of data; its echo is owed to the next echo() (or recv())."""
        data = check_data(data)
        if (
            self.transport == "tcp"
            and self.config.mode == "seed"
            and len(data) > self.config.bufsize
        ):
            raise ValueError(
                f"in seed mode one send() is one message of at most bufsize "
                f"({self.config.bufsize}) bytes, got {len(data)}; echo() splits longer data"
            )
        core = self._open()
        self._framed("send", data, lambda: core.send(data))

    def recv(self, bufsize: int = 65536) -> bytes:
        """Receive up to bufsize bytes; b"" when the server closed."""
        bufsize = _int("bufsize", bufsize, 1, 1 << 30)
        core = self._open()
        data = self._timed("recv", lambda: core.recv(bufsize), core.timeout)
        if not data:
            self.server_closed = True
        return data

    def shutdown_write(self) -> None:
        """Half-close: tell the server nothing more is coming; its remaining
        echo can still be received."""
        self._open().shutdown_write()

    @property
    def tls_version(self) -> str | None:
        """The TLS version negotiated ("TLSv1.3"); None without TLS."""
        session = self._open().tls_session()
        return None if session is None else session[0]

    @property
    def alpn_protocol(self) -> str | None:
        """The ALPN protocol the server chose; None if none (or no TLS)."""
        session = self._open().tls_session()
        return None if session is None else session[1]

    def fileno(self) -> int:
        return self._open().fileno()

    def close(self) -> None:
        core, self._core = self._core, None
        if core is not None:
            core.close()

    def __enter__(self) -> EchoClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"<EchoClient {self.engine} {self.transport} {self.mode} to "
            f"{hostport(*self.server_address)}>"
        )
