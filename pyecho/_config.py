"""Settings, results and argument checks shared by both engines.

Every public call validates here, in Python, before an engine sees anything:
the C core checks again (echo_config_check) but is never handed garbage.
"""

from __future__ import annotations

import ipaddress
import math
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any, Literal

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12345  # the original server.c's port

TRANSPORTS = ("tcp", "udp")  # index = enum echo_transport in csrc/pyecho.h
MODES = ("raw", "line", "seed")  # index = enum echo_mode in csrc/pyecho.h
ENGINES = ("native", "python")  # the engines that run
# What an engine argument may say: "auto" (the default) is the native engine
# where its library loads, else the Python engine (pyecho/_auto.py).
ENGINE_CHOICES = ("auto", *ENGINES)
DEFAULT_ENGINE = "auto"
# index = enum echo_close_reason in csrc/pyecho.h
CLOSE_REASONS = (
    "peer",
    "quit",
    "reset",
    "shutdown",
    "idle",
    "limit",
    "reset_after",
    "refused",
    "handshake",
)
# index = enum echo_event_kind
EVENT_KINDS = ("open", "close", "drop")
# Why a UDP datagram was not echoed: index = enum echo_drop_reason.
DROP_REASONS = (
    "guard",
    "rate_source",
    "rate_global",
    "full",
    "error",
    "fault",
    "loop",
    "shutdown",
)

# What echo() found: enum echo_reply in csrc/pyecho.h.
REPLY_OPEN, REPLY_CLOSED, REPLY_SHORT = 0, 1, 2

# ---- the settings: defined once, here ----

Kind = Literal["choice", "word", "flag", "count", "bytes", "rate", "seconds", "probability"]
Side = Literal["server", "client", "both"]

# The engines count time in whole milliseconds.
RESOLUTION = 0.001


@dataclass(frozen=True)
class Setting:
    """One setting: its default, bounds, help and who uses it.

    kind: "choice" (one of ``choices``), "word" (bytes of ``lower`` to
    ``upper`` length), "flag" (a bool), "count", "bytes" and "rate" (bytes
    per second: ints from ``lower`` to ``upper``), "seconds" (a number from
    ``lower`` to ``upper``, in steps of RESOLUTION), "probability" (0 to 1).
    ``off`` says what None means, if it is accepted; None then becomes
    ``off_value`` (0 for a count or seconds, where 0 means the same).
    ``transports``: where it applies; elsewhere it must keep its default.
    """

    name: str
    kind: Kind
    default: Any
    side: Side
    help: str
    lower: int | float = 0
    upper: int | float = 0
    choices: tuple[str, ...] = ()
    off: str = ""
    off_value: Any = None
    transports: tuple[str, ...] = TRANSPORTS

    @property
    def flag(self) -> str:
        """The command line option."""
        return "--" + self.name.replace("_", "-")

    @property
    def unit(self) -> str:
        return {"bytes": "bytes", "rate": "bytes/s", "seconds": "seconds"}.get(self.kind, "")

    def show(self, value: Any) -> str:
        """A value as a user types it: 99 bytes, 10.0 seconds, exit."""
        if value is None:
            return self.off
        if isinstance(value, bytes):
            return value.decode(errors="backslashreplace")
        if value == 0 and self.off:
            return "0"
        return f"{value} {self.unit}".rstrip()

    def check(self, value: Any, label: str | None = None) -> Any:
        """The value as the engines take it, or TypeError/ValueError naming
        the setting (or ``label``, a command line flag, say)."""
        name = label or self.name
        if value is None and self.off:
            return self.off_value
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(
                    f"{name} must be one of {', '.join(self.choices)}; got {show_value(value)}"
                )
            return value
        if self.kind == "word":
            return self._word(name, value)
        if self.kind == "seconds":
            return self._seconds(name, value)
        if self.kind == "flag":
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be True or False, not {value!r}")
            return value
        if self.kind == "probability":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number, not {type(value).__name__}")
            if not (_finite(value) and 0 <= value <= 1):
                raise ValueError(
                    f"{name} must be a probability from 0 to 1, got {show_number(value)}"
                )
            return float(value)
        return _int(name, value, int(self.lower), int(self.upper))

    def _word(self, name: str, value: Any) -> bytes:
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"{name} must be bytes, str or None, not {type(value).__name__}")
        word = bytes(value)
        if not self.lower <= len(word) <= self.upper:
            raise ValueError(f"{name} must be {self.lower} to {self.upper} bytes long")
        return word

    def _seconds(self, name: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            or_none = " or None" if self.off else ""
            raise TypeError(f"{name} must be a number{or_none}, not {type(value).__name__}")
        zero_is_off = self.off_value == 0
        if not (_finite(value) and self.lower <= value <= self.upper) or (
            value == 0 and not zero_is_off
        ):
            if zero_is_off:
                raise ValueError(
                    f"{name} must be between 0 and {self.upper:g} seconds, got {show_number(value)}"
                )
            raise ValueError(
                f"{name} must be a positive number of seconds up to {self.upper:g}, "
                f"got {show_number(value)}"
            )
        if 0 < value < RESOLUTION:
            raise ValueError(f"{name} must be at least {RESOLUTION} seconds, got {value}")
        return float(value)


def _setting(kind: Kind, default: Any, side: Side, help: str, **bounds: Any) -> Any:
    """A Config field carrying its Setting (named after the field)."""
    return field(
        default=default, metadata={"setting": Setting("", kind, default, side, help, **bounds)}
    )


@dataclass(frozen=True)
class Config:
    """The settings server and client agree on, with their defaults.

    This class is the one table of settings: each field carries its Setting
    (bounds, help, side). make_config(), the API's keyword defaults, the
    command line's options and the C core's echo_config (pyecho/_native.py)
    all derive from it; tests/test_contract.py pins the C core's defaults
    and bounds to it.
    """

    transport: str = _setting(
        "choice",
        "tcp",
        "both",
        "tcp: a stream per client, framed by the mode; udp: RFC 862 over UDP, every "
        "datagram echoed whole",
        choices=TRANSPORTS,
    )
    mode: str = _setting(
        "choice",
        "seed",
        "both",
        "seed: the original programs' protocol; line: newline-terminated lines; "
        "raw: every byte (RFC 862)",
        choices=MODES,
        transports=("tcp",),
    )
    quit_word: bytes | None = _setting(
        "word",
        b"exit",
        "both",
        "the message (seed mode) or line (line mode) that ends a connection",
        lower=1,
        upper=255,
        off="no quit word",
        transports=("tcp",),
    )
    bufsize: int = _setting(
        "bytes",
        99,
        "both",
        "seed mode: bytes per read, one message",
        lower=1,
        upper=1 << 20,
        transports=("tcp",),
    )
    max_line: int = _setting(
        "bytes",
        64 * 1024,
        "both",
        "line mode: longest line echoed whole",
        lower=1,
        upper=1 << 24,
        transports=("tcp",),
    )
    max_pending: int = _setting(
        "bytes",
        256 * 1024,
        "server",
        "echo queued per client before reading from it pauses (UDP: echo held by faults)",
        lower=1,
        upper=1 << 30,
    )
    max_clients: int = _setting(
        "count",
        0,
        "server",
        "connections served at once",
        lower=0,
        upper=1 << 31,
        off="no limit",
        off_value=0,
        transports=("tcp",),
    )
    idle_timeout: float = _setting(
        "seconds",
        0.0,
        "server",
        "close a client silent for this many seconds",
        lower=0,
        upper=4_000_000,  # fits the C core's uint32 milliseconds
        off="never",
        off_value=0.0,
        transports=("tcp",),
    )
    backlog: int = _setting(
        "count", 128, "server", "listen() backlog", lower=1, upper=65535, transports=("tcp",)
    )
    udp_guard: bool = _setting(
        "flag",
        True,
        "server",
        "never answer source ports below 512 or of services that answer by themselves "
        "(SSDP, mDNS, memcached...), multicast and broadcast sources, nor datagrams sent "
        "to a broadcast or multicast address",
        transports=("udp",),
    )
    udp_rate: int = _setting(
        "count",
        1_000_000,
        "server",
        "datagrams echoed per second in all",
        lower=0,
        upper=1_000_000_000,
        off="no limit",
        off_value=0,
        transports=("udp",),
    )
    udp_rate_per_source: int = _setting(
        "count",
        250_000,
        "server",
        "datagrams echoed per second to one address and port",
        lower=0,
        upper=1_000_000_000,
        off="no limit",
        off_value=0,
        transports=("udp",),
    )
    udp_loop_limit: int = _setting(
        "count",
        4000,
        "server",
        "datagrams in a row from one source that bring it nothing new (only payloads "
        "echoed to it before) before it is taken for an echo loop and not answered "
        "(datagrams from the server's own port never are)",
        lower=0,
        upper=1_000_000_000,
        off="no limit",
        off_value=0,
        transports=("udp",),
    )


SETTINGS: tuple[Setting, ...] = tuple(
    replace(f.metadata["setting"], name=f.name) for f in fields(Config)
)
SETTING: Mapping[str, Setting] = {s.name: s for s in SETTINGS}

# Each client's own, not part of Config: it can change while connected.
TIMEOUT = Setting(
    "timeout",
    "seconds",
    10.0,
    "client",
    "longest wait for the server (to connect, to take data, to echo)",
    lower=0,
    upper=2_000_000,  # fits the C core's int milliseconds (and poll())
    off="wait forever",
)

DEFAULTS = Config()


def settings_for(side: Side) -> tuple[Setting, ...]:
    """The Config settings a server (or a client) takes."""
    return tuple(s for s in SETTINGS if s.side in (side, "both"))


@dataclass(frozen=True)
class Stats:
    """Server counters; ``closed`` counts closes by reason (TCP), ``dropped``
    datagrams not echoed by reason (UDP)."""

    accepted: int = 0
    open: int = 0
    rejected: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    closed: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(CLOSE_REASONS, 0))
    datagrams_in: int = 0
    datagrams_out: int = 0
    dropped: Mapping[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))


@dataclass(frozen=True)
class Event:
    """A connection opened (``kind="open"``) or closed (``kind="close"``,
    ``reason`` one of CLOSE_REASONS); over UDP, datagrams were dropped
    (``kind="drop"``, ``reason`` one of DROP_REASONS, ``count`` of them since
    the last such event, at most one per reason per second; ``peer`` the
    latest one's source)."""

    kind: str
    conn_id: int
    peer: tuple[str, int]
    reason: str | None = None
    count: int = 0


class ConnectionClosedError(ConnectionError):
    """The server closed the connection before the whole echo arrived."""

    def __init__(self, partial: bytes) -> None:
        super().__init__(f"the server closed the connection after {len(partial)} bytes of the echo")
        self.partial = partial


def _int(name: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}, got {show_number(value)}")
    return value


def _finite(value: int | float) -> bool:
    """Whether a number is finite, without converting an int to a float
    (math.isfinite(10**400) raises OverflowError): any int is."""
    return isinstance(value, int) or math.isfinite(value)


# Ints from here on are shown rounded: their digits say nothing more in an
# error, and str() refuses ints of more than 4300 digits.
_EXACT_UP_TO = 10**30


def show_number(value: int | float) -> str:
    """A number for an error message: as Python writes it, or, for an int
    too large to read at a glance, its order of magnitude ("about 1e+400")."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _EXACT_UP_TO:
        sign = "-" if value < 0 else ""
        return f"about {sign}1e+{math.floor(math.log10(abs(value)))}"
    return f"{value}"


def show_value(value: Any) -> str:
    """repr(value) for an error message, with a huge int as show_number()
    writes it (repr() of one is unreadable, or an error of its own)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return show_number(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:40] + f"... ({len(text)} characters)"


def check_engine(engine: Any) -> str:
    if engine not in ENGINE_CHOICES:
        raise ValueError(f"engine must be one of {', '.join(ENGINE_CHOICES)}; got {engine!r}")
    return str(engine)


def check_port(port: Any, *, allow_zero: bool) -> int:
    return _int("port", port, 0 if allow_zero else 1, 65535)


# Why a setting does not apply, by the transport it does not apply to.
NOT_APPLICABLE = {
    "udp": "UDP echoes every datagram whole, with no modes, quit word or connections",
    "tcp": "it is a UDP setting (transport='udp')",
}


def make_config(**settings: Any) -> Config:
    """Check each setting given (by name; the rest keep their defaults) and
    return a Config, or raise TypeError/ValueError naming the setting. A
    setting that does not apply to the transport must keep its default."""
    for name in settings:
        if name not in SETTING:
            raise TypeError(f"unknown setting {name!r}; known: {', '.join(SETTING)}")
    cfg = Config(**{name: SETTING[name].check(value) for name, value in settings.items()})
    check_applies(cfg, SETTINGS, cfg.transport)
    return cfg


def check_applies(values: Any, table: tuple[Setting, ...], transport: str) -> None:
    """ValueError for a setting of `table` given a value other than its
    default where it does not apply to `transport`."""
    for s in table:
        if transport not in s.transports and getattr(values, s.name) != s.default:
            raise ValueError(
                f"{s.name} does not apply to {transport.upper()}: {NOT_APPLICABLE[transport]}"
            )


def check_timeout(timeout: Any) -> float | None:
    return TIMEOUT.check(timeout)  # type: ignore[no-any-return]


def check_data(data: Any) -> bytes:
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError(f"data must be bytes-like, not {type(data).__name__}")


# The longest host name DNS allows, and part of one (RFC 1035), in characters.
MAX_HOST = 253
MAX_LABEL = 63
# Where a client given the unspecified address connects: this machine, as
# Linux does, made explicit so that every engine and system agrees.
_UNSPECIFIED = {"0.0.0.0": "127.0.0.1", "::": "::1"}


def resolve(address: Any, *, server: bool) -> list[tuple[int, str, int]]:
    """[(family, numeric host, port)] for a (host, port) pair, best first.

    Names are resolved here, once, for both engines; "" means all IPv4
    interfaces for a server, as the original's INADDR_ANY did. A server binds
    the first address; a client tries each in turn. A client given "::" or
    "0.0.0.0" connects to loopback ("::1", "127.0.0.1"). An IPv6 scope
    ("fe80::1%eth0") is kept: the numeric hosts are as ``numeric_host()``
    writes them, which both engines read back (``sockaddr()``, net_resolve).
    """
    if not isinstance(address, tuple) or len(address) != 2:
        raise TypeError(f"address must be a (host, port) tuple, not {address!r}")
    host, port = address
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {type(host).__name__}")
    name = _check_host(host)
    port = check_port(port, allow_zero=server)
    if host == "":
        name = "0.0.0.0" if server else DEFAULT_HOST
    try:
        infos = socket.getaddrinfo(
            name, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE if server else 0
        )
    except UnicodeError as e:  # from the IDNA codec: a label over 63 characters, say
        raise ValueError(f"host {_shown(host)} is not a valid host name: {e}") from None
    found: list[tuple[int, str, int]] = []
    for family, _, _, _, addr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        numeric = numeric_host(addr)
        if not server and ipaddress.ip_address(addr[0]).is_unspecified:
            numeric = _UNSPECIFIED[str(addr[0])]  # any scope of it dropped
        entry = (int(family), numeric, port)
        if entry not in found:
            found.append(entry)
    if not found:
        raise socket.gaierror(socket.EAI_FAMILY, f"no IPv4 or IPv6 address for {host!r}")
    return found


def _shown(host: str) -> str:
    """A host for an error message: quoted, cut short if very long."""
    return repr(host) if len(host) <= 60 else repr(host[:40]) + f"... ({len(host)} characters)"


def _check_host(host: str) -> str:
    """The host as getaddrinfo() takes it, or ValueError for one that cannot
    be an address or a name. An IPv6 scope given as an interface name becomes
    its index, which getaddrinfo() takes for any IPv6 address (by name, only
    for link-local ones)."""
    if "\0" in host:
        raise ValueError("host must not contain NUL characters")
    if len(host) > MAX_HOST:
        raise ValueError(
            f"host {_shown(host)} is too long: {len(host)} characters, at most {MAX_HOST}"
        )
    if any(len(label) > MAX_LABEL for label in host.split(".")):
        raise ValueError(
            f"host {_shown(host)} is not a valid host name: a label (between dots) is longer "
            f"than {MAX_LABEL} characters"
        )
    if host.startswith("[") and host.endswith("]"):
        raise ValueError(
            f"host {host!r} has brackets: give the address without them ({host[1:-1]!r}); "
            "brackets only set an IPv6 address apart from its port, as in [::1]:12345"
        )
    if "%" not in host:
        if _link_local(host):
            raise ValueError(
                f"host {host!r} is a link-local address: name the interface it is on, "
                f"as in {host}%eth0 (or its index, {host}%2)"
            )
        return host
    addr, _, zone = host.partition("%")
    try:
        socket.inet_pton(socket.AF_INET6, addr)
    except OSError:
        raise ValueError(
            f"host {_shown(host)}: a scope (after %) follows only an IPv6 address, "
            "as in fe80::1%eth0"
        ) from None
    if zone.isascii() and zone.isdigit():  # an interface index, as getaddrinfo() reads it
        if 0 < int(zone) <= 0xFFFFFFFF:
            return host
    # An interface name as Linux allows them: up to 15 characters, no "/" or ":".
    elif zone.isascii() and zone.isprintable() and re.fullmatch(r"[^\s/:%]{1,15}", zone):
        try:
            index = socket.if_nametoindex(zone)
        except OSError:
            raise socket.gaierror(
                socket.EAI_NONAME, f"no network interface {zone!r} here (the scope of {addr})"
            ) from None
        return f"{addr}%{index}"
    raise ValueError(
        f"host {_shown(host)}: the scope after % must be a network interface's name "
        "or index, as in fe80::1%eth0 or fe80::1%2"
    )


def _link_local(host: str) -> bool:
    """Whether host is an IPv6 link-local address (fe80::/10), which is
    ambiguous without the interface it is on."""
    try:
        return ipaddress.IPv6Address(host).is_link_local
    except ValueError:
        return False


def numeric_host(addr: tuple[Any, ...]) -> str:
    """A socket address's host as both engines write it (getnameinfo(), as
    net_format() in csrc/net.c): an IPv6 address with a scope keeps it, by
    interface name for a link-local address ("fe80::1%eth0"), so that it can
    be connected to again."""
    if len(addr) == 4 and addr[3]:
        return socket.getnameinfo(addr, socket.NI_NUMERICHOST | socket.NI_NUMERICSERV)[0]
    return str(addr[0])


def sockaddr(family: int, host: str, port: int) -> tuple[Any, ...]:
    """The socket address for a numeric host from resolve() or numeric_host():
    an IPv6 scope becomes the address's scope id (as net_resolve() does)."""
    if family == socket.AF_INET6 and "%" in host:
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)[
            0
        ][4]
    return (host, port)


def hostport(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def to_ms(seconds: float) -> int:
    """Seconds as the engines' whole milliseconds, rounded up (after the
    float error of the product: 0.07 s is 70 ms, not 71)."""
    return math.ceil(round(seconds * 1000, 6))


def idle_timeout_ms(cfg: Config) -> int:
    return to_ms(cfg.idle_timeout)
