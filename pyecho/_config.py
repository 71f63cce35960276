"""Settings, results and argument checks shared by both engines.

Every public call validates here, in Python, before an engine sees anything:
the C core checks again (echo_config_check) but is never handed garbage.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12345  # the original server.c's port

MODES = ("raw", "line", "seed")  # index = enum echo_mode in csrc/pyecho.h
ENGINES = ("native", "python")
# index = enum echo_close_reason in csrc/pyecho.h
CLOSE_REASONS = ("peer", "quit", "reset", "shutdown", "idle")

# What echo() found: enum echo_reply in csrc/pyecho.h.
REPLY_OPEN, REPLY_CLOSED, REPLY_SHORT = 0, 1, 2

# The same bounds as csrc/framing.c.
MAX_BUFSIZE = 1 << 20
MAX_LINE = 1 << 24
MAX_PENDING = 1 << 30
MAX_QUIT_LEN = 255
MAX_CLIENTS = 1 << 31
MAX_IDLE_TIMEOUT = 4_000_000.0  # seconds; fits the C core's uint32 milliseconds
MAX_TIMEOUT = 2_000_000.0  # seconds; fits the C core's int milliseconds (and poll())


@dataclass(frozen=True)
class Config:
    """Protocol settings: what both engines (server and client) agree on."""

    mode: str = "seed"
    quit_word: bytes | None = b"exit"
    bufsize: int = 99
    max_line: int = 64 * 1024
    max_pending: int = 256 * 1024
    max_clients: int = 0  # 0: no limit
    idle_timeout: float = 0.0  # seconds, 0: never
    backlog: int = 128


@dataclass(frozen=True)
class Stats:
    """Server counters; ``closed`` counts closes by reason."""

    accepted: int = 0
    open: int = 0
    rejected: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    closed: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(CLOSE_REASONS, 0))


@dataclass(frozen=True)
class Event:
    """A connection opened (``kind="open"``) or closed (``kind="close"``)."""

    kind: str
    conn_id: int
    peer: tuple[str, int]
    reason: str | None = None  # one of CLOSE_REASONS for "close"


class ConnectionClosedError(ConnectionError):
    """The server closed the connection before the whole echo arrived."""

    def __init__(self, partial: bytes) -> None:
        super().__init__(f"the server closed the connection after {len(partial)} bytes of the echo")
        self.partial = partial


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {value}")
    return value


def check_engine(engine: Any) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    return engine


def check_port(port: Any, *, allow_zero: bool) -> int:
    return _int("port", port, 0 if allow_zero else 1, 65535)


def make_config(
    mode: Any = "seed",
    quit_word: Any = b"exit",
    bufsize: Any = 99,
    max_line: Any = 64 * 1024,
    max_pending: Any = 256 * 1024,
    max_clients: Any = None,
    idle_timeout: Any = None,
    backlog: Any = 128,
) -> Config:
    """Check every setting and return a Config, or raise TypeError/ValueError."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if isinstance(quit_word, str):
        quit_word = quit_word.encode()
    if quit_word is not None:
        if not isinstance(quit_word, (bytes, bytearray, memoryview)):
            raise TypeError(f"quit_word must be bytes, str or None, not {type(quit_word).__name__}")
        quit_word = bytes(quit_word)
        if not 1 <= len(quit_word) <= MAX_QUIT_LEN:
            raise ValueError(f"quit_word must be 1 to {MAX_QUIT_LEN} bytes long")
    if max_clients is None:
        max_clients = 0
    if idle_timeout is None:
        idle_timeout = 0.0
    if isinstance(idle_timeout, bool) or not isinstance(idle_timeout, (int, float)):
        raise TypeError(f"idle_timeout must be a number, not {type(idle_timeout).__name__}")
    if not (math.isfinite(idle_timeout) and 0 <= idle_timeout <= MAX_IDLE_TIMEOUT):
        raise ValueError(f"idle_timeout must be between 0 and {MAX_IDLE_TIMEOUT:g} seconds")
    if 0 < idle_timeout < 0.001:
        raise ValueError("idle_timeout must be at least 0.001 seconds")
    return Config(
        mode=mode,
        quit_word=quit_word,
        bufsize=_int("bufsize", bufsize, 1, MAX_BUFSIZE),
        max_line=_int("max_line", max_line, 1, MAX_LINE),
        max_pending=_int("max_pending", max_pending, 1, MAX_PENDING),
        max_clients=_int("max_clients", max_clients, 0, MAX_CLIENTS),
        idle_timeout=float(idle_timeout),
        backlog=_int("backlog", backlog, 1, 65535),
    )


def check_timeout(timeout: Any) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number or None, not {type(timeout).__name__}")
    if not (math.isfinite(timeout) and 0 < timeout <= MAX_TIMEOUT):
        raise ValueError(
            f"timeout must be a positive number of seconds up to {MAX_TIMEOUT:g}, got {timeout}"
        )
    return float(timeout)


def check_data(data: Any) -> bytes | memoryview:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data must be bytes-like, not {type(data).__name__}")


def resolve(address: Any, *, server: bool) -> list[tuple[int, str, int]]:
    """[(family, numeric host, port)] for a (host, port) pair, best first.

    Names are resolved here, once, for both engines; "" means all IPv4
    interfaces for a server, as the original's INADDR_ANY did. A server binds
    the first address; a client tries each in turn.
    """
    if not isinstance(address, tuple) or len(address) != 2:
        raise TypeError(f"address must be a (host, port) tuple, not {address!r}")
    host, port = address
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    if "\0" in host:
        raise ValueError("host must not contain NUL characters")
    port = check_port(port, allow_zero=server)
    if host == "":
        host = "0.0.0.0" if server else DEFAULT_HOST
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE if server else 0
    )
    found = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (family, sockaddr[0], port) not in found:
            found.append((family, sockaddr[0], port))
    if not found:
        raise socket.gaierror(socket.EAI_FAMILY, f"no IPv4 or IPv6 address for {host!r}")
    return found


def idle_timeout_ms(cfg: Config) -> int:
    return math.ceil(cfg.idle_timeout * 1000)
