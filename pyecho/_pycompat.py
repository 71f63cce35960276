"""What the pure-Python engine needs from the platform, on every platform
CPython runs on (Linux, macOS, the BSDs, Windows): the one place that knows
what differs, so the engine itself uses only these names.

- Send flags: MSG_NOSIGNAL (no SIGPIPE: Linux, the BSDs) and MSG_DONTWAIT
  exist only where the system has them; 0 elsewhere. The engine's sockets
  are non-blocking, so MSG_DONTWAIT is never needed, and where MSG_NOSIGNAL
  is missing CPython ignores SIGPIPE itself (at startup) or the system has
  no SIGPIPE (Windows).
- The selector: ``selectors.DefaultSelector`` (epoll, kqueue, devpoll,
  poll, then select, the first the system has), or the one the
  environment variable PYECHO_SELECTOR names: ``select``, ``poll``,
  ``epoll``, ``kqueue`` (tests force ``select``, the only one Windows has).
  The select() selector watches at most FD_SETSIZE sockets: 512 on Windows
  (CPython's build), 1024 on Linux and macOS (descriptors below 1024).
  Past it, serving stops with SelectLimitError, saying so.
- A non-blocking connect() in progress: EINPROGRESS (POSIX) or EWOULDBLOCK
  (Windows), as asyncio accepts.
- A listening socket: SO_REUSEADDR on POSIX (restart over TIME_WAIT), but
  on Windows SO_REUSEADDR lets another process steal a bound port, so
  SO_EXCLUSIVEADDRUSE there instead.
- SO_LINGER's struct linger: two ints on POSIX, two unsigned shorts on Windows.
- UDP: Windows reports a datagram refused by a closed port ("port
  unreachable") as ConnectionResetError on the next receive; POSIX as
  ConnectionRefusedError. The client says ConnectionRefusedError on both.
"""

from __future__ import annotations

import errno
import os
import selectors
import socket
import struct
import sys

WINDOWS = sys.platform == "win32"

MSG_NOSIGNAL: int = getattr(socket, "MSG_NOSIGNAL", 0)
MSG_DONTWAIT: int = getattr(socket, "MSG_DONTWAIT", 0)

# connect_ex() results that mean "in progress": wait for writability.
CONNECT_PENDING = frozenset(
    {errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, getattr(errno, "WSAEWOULDBLOCK", -1)}
    - {-1}
)

# SO_LINGER on, no time: close() resets the connection (RST).
LINGER_RESET = struct.pack("HH" if WINDOWS else "ii", 1, 0)

SELECTOR_ENV = "PYECHO_SELECTOR"
_SELECTORS = {
    "select": "SelectSelector",
    "poll": "PollSelector",
    "epoll": "EpollSelector",
    "kqueue": "KqueueSelector",
    "devpoll": "DevpollSelector",
}
# The most sockets one select() call watches (CPython's FD_SETSIZE).
SELECT_LIMIT = 512 if WINDOWS else 1024


class SelectLimitError(OSError):
    """More sockets than the select() selector can watch."""


def selector_class() -> type[selectors.BaseSelector]:
    """The selector the Python engine uses (PYECHO_SELECTOR, else the best)."""
    name = os.environ.get(SELECTOR_ENV, "").strip().lower()
    if not name:
        return selectors.DefaultSelector
    cls_name = _SELECTORS.get(name)
    cls = getattr(selectors, cls_name, None) if cls_name else None
    if cls is None:
        have = [n for n, c in _SELECTORS.items() if hasattr(selectors, c)]
        raise ValueError(f"{SELECTOR_ENV}={name!r}: this system's selectors are {', '.join(have)}")
    return cls  # type: ignore[no-any-return]


def make_selector() -> selectors.BaseSelector:
    return selector_class()()


def select_limit_error(sel: selectors.BaseSelector, error: ValueError) -> OSError:
    """The error select() raised past its limit, saying what it means."""
    return SelectLimitError(
        errno.EMFILE,
        f"{error}: the select() selector ({type(sel).__name__}, the only one "
        f"Windows has) watches at most {SELECT_LIMIT} sockets on this system; "
        "set max_clients below it",
    )


def reuse_address(sock: socket.socket) -> None:
    """Let a server restart at once on its port (TIME_WAIT), and on
    Windows keep any other socket off it."""
    if WINDOWS:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE, 1)  # type: ignore[attr-defined, unused-ignore]
    else:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)


def udp_no_connreset(sock: socket.socket) -> None:
    """Windows: a datagram refused by a closed port must not fail the
    server's next receive (SIO_UDP_CONNRESET off); nothing elsewhere."""
    ioctl = getattr(socket, "SIO_UDP_CONNRESET", None)
    if ioctl is not None:
        try:
            sock.ioctl(ioctl, False)  # type: ignore[attr-defined, unused-ignore]
        except OSError:
            pass
