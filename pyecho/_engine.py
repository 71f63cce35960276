"""The interface both engines implement: what api.py may call.

The native engine (pyecho/_native.py, over csrc/) and the Python engine
(pyecho/_pyserver.py, pyecho/_pyclient.py) each provide a server and a
client class of these shapes; api.py adds argument checks and the life cycle on top. Settings are
checked before an engine sees them: an engine may trust its Config.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from ._config import Config, Event, Stats
from ._faults import FaultsInts
from ._tls import TlsFiles

EventHandler = Callable[[Event], None]


@runtime_checkable
class ServerEngine(Protocol):
    """A listening socket and its clients, bound from construction on:
    ``cls(cfg, family, host, port, on_event)`` with a numeric host."""

    def address(self) -> tuple[str, int]:
        """The address actually bound, numeric."""
        ...

    def run(self, timeout: float | None) -> int:
        """Serve for at most timeout seconds (None: until stopped): 1 if the
        time ran out while serving, 0 once stop() was called (every client
        connection is then closed). Events are delivered from here."""
        ...

    def stop(self) -> None:
        """Make run() return 0 soon; from any thread."""
        ...

    def stats(self) -> Stats:
        """A snapshot of the counters; from any thread."""
        ...

    def set_faults(self, faults: FaultsInts | None) -> None:
        """Faults from now on (None: none), checked for the transport; from
        any thread, serving or not. A serving run() applies them within one
        turn of its loop, to open connections too (docs/PROTOCOL.md)."""
        ...

    def free(self) -> None:
        """Close every socket (close events for open clients); not while
        run() runs. Safe to call twice."""
        ...

    def set_tls(self, files: TlsFiles) -> None:
        """Serve TLS on every connection accepted from now on (before
        serving); the files are loaded at once (ValueError if refused)."""
        ...


class ServerFactory(Protocol):
    def __call__(
        self, cfg: Config, family: int, host: str, port: int, on_event: EventHandler | None
    ) -> ServerEngine: ...


@runtime_checkable
class ClientEngine(Protocol):
    """A connection to a server, tracking its framing:
    ``cls(cfg, family, host, port, timeout)`` connects to a numeric host."""

    @property
    def timeout(self) -> float | None:
        """Seconds each wait for the server may take (None: no limit);
        running out raises TimeoutError."""
        ...

    @timeout.setter
    def timeout(self, value: float | None) -> None: ...

    def send(self, data: bytes) -> None:
        """Send all of data; its echo is owed."""
        ...

    def recv(self, bufsize: int) -> bytes:
        """Up to bufsize bytes; b"" at end of stream."""
        ...

    def echo(self, data: bytes) -> tuple[bytes, int]:
        """Send data, receive every echo owed: (reply, one of REPLY_*)."""
        ...

    @property
    def quit_sent(self) -> bool:
        """The quit word went out: the server is closing the connection."""
        ...

    def shutdown_write(self) -> None: ...

    def tls_session(self) -> tuple[str, str | None] | None:
        """Over TLS, the protocol version and ALPN protocol negotiated
        ("TLSv1.3", None); None over plain TCP or UDP."""
        ...

    def fileno(self) -> int: ...

    def close(self) -> None:
        """Safe to call twice."""
        ...


class ClientFactory(Protocol):
    def __call__(
        self, cfg: Config, family: int, host: str, port: int, timeout: float | None
    ) -> ClientEngine: ...
