"""The command line: ``pyecho serve`` and ``pyecho client``, the original
server.c and client.c as a user met them, without their bugs.

Errors are one line on stderr and a non-zero exit status (1 for a failure at
run time, 2 for bad usage), never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import itertools
import os
import queue
import re
import select
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

import pyecho

from . import _auto, _tlscli, _units
from ._config import (
    DEFAULT_ENGINE,
    DEFAULT_HOST,
    DEFAULT_PORT,
    ENGINE_CHOICES,
    NOT_APPLICABLE,
    RESOLUTION,
    TIMEOUT,
    ConnectionClosedError,
    Event,
    Setting,
    Side,
    Stats,
    _int,
    _shown,
    hostport,
    settings_for,
    show_number,
)
from ._faults import FAULTS, Faults
from ._framing import is_quit_message
from ._native import NativeUnavailableError
from .api import EchoClient, EchoServer

# Reading stdin and sending to the server go in pieces of at most this many
# bytes, so no input length can make the client hold more than this.
PIECE = 64 * 1024

# The originals' messages, kept word for word where a user saw them.
MSG_CTRL_C = "\nYou typed Ctrl + C\nBye"
MSG_SIGTERM = "Terminated (SIGTERM)\nBye"
MSG_PEER_CLOSED = "INFO :: Disconnect with client... BYE"
MSG_CLIENT_QUIT = "INFO :: Client want close... BYE"
MSG_SERVER_GONE = "INFO :: Server Disconnected"


class _StdoutGone(Exception):
    """Whoever read our output went away."""


class _Terminated(Exception):
    """SIGTERM: stop as for Ctrl+C (containers and service managers send it)."""


class CliError(Exception):
    """A failure to report as one line, with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


# ---- options, from the settings table (pyecho/_config.py) ----


class _Parser(argparse.ArgumentParser):
    """Usage errors are one line naming the flag, exit status 2; --help
    shows the rest."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # argparse takes "-1s" or "-1KiB" after --latency for an option (it
        # knows only "-1" and "-1.5" as negative numbers) and would say
        # "expected one argument": anything starting as a number is a value,
        # whose check then gives the range (no option of ours looks so).
        # A whole-string pattern: some Python versions match, some fullmatch.
        self._negative_number_matcher = re.compile(r"^-\.?\d.*$", re.DOTALL)

    def error(self, message: str) -> NoReturn:
        # argparse says "argument --port: ..."; our checks name the flag already.
        message = re.sub(r"^argument (\S+): (?=\1 )", "", message)
        self.exit(2, f"pyecho: error: {message}\n")


def _converter(setting: Setting, negatable: bool) -> Callable[[str], Any]:
    """The argparse type for a setting: text (with units: 64KiB, 50ms) to a
    checked value, or one line naming the flag."""
    flag = setting.flag

    def convert(text: str) -> Any:
        value: Any = text
        if setting.kind in _units.FORMS:
            try:
                value = _units.parse(setting.kind, text)
            except ValueError as e:
                raise argparse.ArgumentTypeError(
                    f"{flag} must be {e}, got {_shown(text)}"
                ) from None
        try:
            return setting.check(value, label=flag)
        except (TypeError, ValueError) as e:
            message = str(e)
            if (
                len(text) <= 40
                and re.search(r"[^\d.+\-]", text)
                and message.endswith(f"got {show_number(value)}")
            ):
                message += f" ({text})"  # what 64KiB or 2m came to
            if negatable and setting.off and setting.off_value is None:
                message += f" (or --no-{flag[2:]}: {setting.off})"
            raise argparse.ArgumentTypeError(message) from None

    return convert


_METAVARS = {
    "count": "N",
    "bytes": "SIZE",
    "rate": "RATE",
    "seconds": "TIME",
    "word": "WORD",
    "probability": "CHANCE",
}


def _given(namespace: argparse.Namespace, dest: str, option: str | None) -> None:
    """Remember which flag the user typed for a setting: a setting that does
    not apply to the transport is an error when typed, never as a default."""
    given = getattr(namespace, "given", None) or {}
    given[dest] = option
    namespace.given = given


class _Store(argparse.Action):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, values)
        _given(namespace, self.dest, option)


class _StoreConst(argparse.Action):
    def __init__(self, option_strings: Any, dest: str, const: Any = None, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, const=const, **kw)

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        setattr(namespace, self.dest, self.const)
        _given(namespace, self.dest, option)


class _Flag(argparse.BooleanOptionalAction):
    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        super().__call__(parser, namespace, values, option)
        _given(namespace, self.dest, option)


def _add_option(p: Any, setting: Setting, negatable: bool = True) -> None:
    """--name for a setting, with its default and unit in the help; and
    --no-name for one whose "off" (None) cannot be typed as a value (unless
    not ``negatable``: off is the default and needs no flag)."""
    default = setting.default
    shown = setting.show(default)
    only = "" if len(setting.transports) > 1 else f" [{setting.transports[0].upper()}]"
    if setting.kind == "flag":
        p.add_argument(
            setting.flag,
            action=_Flag,
            default=default,
            help=f"{setting.help} (default: {'on' if default else 'off'}){only}",
        )
        return
    if setting.off and setting.off_value is not None:  # typed as 0
        help = f"{setting.help}; 0: {setting.off} (default: {shown}){only}"
    else:
        help = f"{setting.help} (default: {shown}){only}"
    p.add_argument(
        setting.flag,
        action=_Store,
        type=_converter(setting, negatable),
        default=default,
        metavar="{" + ",".join(setting.choices) + "}"
        if setting.choices
        else _METAVARS[setting.kind],
        help=help,
    )
    if negatable and setting.off and setting.off_value is None:
        p.add_argument(
            f"--no-{setting.flag[2:]}",
            dest=setting.name,
            action=_StoreConst,
            const=None,
            default=default,
            help=setting.off,
        )


def _port(side: Side) -> Callable[[str], int]:
    lowest = 0 if side == "server" else 1  # a server on port 0 gets a free one

    def convert(text: str) -> int:
        try:
            port = int(_units.parse("count", text))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--port must be a whole number, got {_shown(text)}"
            ) from None
        try:
            return _int("--port", port, lowest, 65535)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return convert


def _explain(exc: OSError, host: str, port: int, action: str) -> str:
    """One clear line for a socket error, naming what failed."""
    where = hostport(host, port)
    if isinstance(exc, socket.gaierror):
        return f"unknown host {host!r}: {exc.strerror}"
    if exc.errno == errno.EADDRINUSE:
        shown = f"[{host}]" if ":" in host else host
        return f"port {port} on {shown} is already in use (is another server running there?)"
    if exc.errno == errno.EACCES and action == "listen" and 0 < port < 1024:
        return (
            f"permission denied to listen on port {port}: ports 0-1023 are well-known "
            "ports, reserved for system services, and need administrator privileges; "
            "use a registered port (1024-49151) such as the default 12345"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot {action} on {where}: that address is not one of this machine's"
    if exc.errno == errno.ECONNREFUSED:
        return f"cannot connect to {where}: connection refused (is the server running?)"
    if isinstance(exc, TimeoutError):
        return f"cannot connect to {where}: timed out"
    reason = exc.strerror or str(exc)
    on = "on" if action == "listen" else "to"
    return f"cannot {action} {on} {where}: {reason[0].lower() + reason[1:]}"


def _host(side: Side) -> Callable[[str], str]:
    """--host: refuses an empty one, which the API reads as every IPv4
    interface (a server) or this machine (a client): said plainly, never
    an accident of quoting such as --host "$UNSET"."""

    def convert(text: str) -> str:
        if text:
            return text
        if side == "server":
            raise argparse.ArgumentTypeError(
                "--host must not be empty: to listen on every interface, say so with "
                "--host 0.0.0.0 (IPv4) or --host :: (IPv6 and IPv4); the default, "
                f"{DEFAULT_HOST}, keeps the server on this machine"
            )
        raise argparse.ArgumentTypeError(
            f"--host must not be empty: give the server's address (default: {DEFAULT_HOST})"
        )

    return convert


def _common_options(p: argparse.ArgumentParser, side: Side, host_help: str) -> None:
    p.add_argument(
        "--host",
        type=_host(side),
        default=DEFAULT_HOST,
        help=f"{host_help} (default: {DEFAULT_HOST})",
    )
    p.add_argument(
        "--port",
        type=_port(side),
        default=DEFAULT_PORT,
        metavar="PORT",
        help=f"TCP or UDP port (default: {DEFAULT_PORT})",
    )
    p.add_argument(
        "--engine",
        type=_choice("--engine", ENGINE_CHOICES),
        default=DEFAULT_ENGINE,
        metavar="{" + ",".join(ENGINE_CHOICES) + "}",
        help="native: the C core; python: the pure-Python one; auto: native where its "
        "library loads, else python; PYECHO_ENGINE=python forces python "
        f"(default: {DEFAULT_ENGINE})",
    )
    for setting in settings_for(side):
        _add_option(p, setting)
    p.add_argument(
        "--udp",
        dest="transport",
        action=_StoreConst,
        const="udp",
        help="UDP echo (RFC 862 over UDP): the same as --transport udp (default: TCP)",
    )


def _choice(flag: str, choices: tuple[str, ...]) -> Callable[[str], str]:
    def convert(text: str) -> str:
        if text not in choices:
            raise argparse.ArgumentTypeError(
                f"{flag} must be one of {', '.join(choices)}; got {_shown(text)}"
            )
        return text

    return convert


def _settings(args: argparse.Namespace, side: Side) -> dict[str, Any]:
    """The settings a server (or client) takes, as parsed."""
    return {"engine": args.engine} | {s.name: getattr(args, s.name) for s in settings_for(side)}


def _check_transport(args: argparse.Namespace, side: Side) -> None:
    """ValueError, naming the flag, for a setting or fault typed that does
    not apply to the transport."""
    transport = args.transport
    given = getattr(args, "given", None) or {}
    faults = FAULTS if side == "server" else ()
    for s in (*settings_for(side), *faults):
        flag = given.get(s.name)
        if flag is None or transport in s.transports:
            continue
        if transport == "tcp":
            why = "it is for UDP (add --udp)"
        elif s in faults:
            udp = [f.flag for f in FAULTS if "udp" in f.transports]
            why = f"of the faults, UDP takes {', '.join(udp[:-1])} and {udp[-1]}"
        else:
            why = NOT_APPLICABLE["udp"]
        raise ValueError(f"{flag} does not apply to {transport.upper()}: {why}")


def _faults(args: argparse.Namespace) -> Faults | None:
    """The Faults typed (None: none), or ValueError naming the flags."""
    try:
        faults = Faults(**{s.name: getattr(args, s.name) for s in FAULTS})
    except ValueError as e:  # a rule between faults: name them as flags
        flags = {s.name: s.flag for s in FAULTS}
        names = "|".join(sorted(flags, key=len, reverse=True))
        raise ValueError(re.sub(rf"\b({names})\b", lambda m: flags[m[1]], str(e))) from None
    return faults if faults.active else None


def _describe(faults: Faults) -> str:
    """The faults in effect, for the banner: latency 50ms ± 10ms, rate 64
    KiB/s, seed 7 (the seed always, drawn or given, so a run can be repeated)."""
    shown = []
    for s in FAULTS:
        value = getattr(faults, s.name)
        if s.name in ("jitter", "seed"):
            continue  # jitter goes with latency; the seed comes last
        if value == s.default and not (s.name == "latency" and faults.jitter):
            continue
        if s.kind == "seconds":
            text = _units.format_time(value)
            if s.name == "latency" and faults.jitter:
                text += f" {_PLUS_MINUS} {_units.format_time(faults.jitter)}"
        elif s.kind == "probability":
            text = _units.format_chance(value)
        else:
            text = _units.format_size(value) + "/s" * (s.kind == "rate")
        shown.append(f"{s.name.replace('_', ' ')} {text}")
    return ", ".join([*shown, f"seed {faults.seed}"])


def _can_print(text: str) -> bool:
    try:
        text.encode(getattr(sys.stdout, "encoding", None) or "ascii")
    except (UnicodeEncodeError, LookupError):
        return False
    return True


_PLUS_MINUS = "\u00b1" if _can_print("\u00b1") else "+/-"


class _Version(argparse.Action):
    """--version: the version and, on a second line, the engine that runs by
    default and, for the Python engine by fallback, why."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"pyecho {pyecho.__version__}\n{_auto.describe()}", flush=True)
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pyecho",
        description="A TCP and UDP echo server and client (C engine or pure Python).",
    )
    parser.add_argument("--version", action=_Version, help="show the version and engine, and exit")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser(
        "serve",
        help="run the echo server (like the original server.c)",
        description="Run an echo server until Ctrl+C (or SIGTERM), printing a line per "
        "connection opened or closed (TCP) or per second of datagrams dropped (UDP).",
        epilog=_units.HELP,
    )
    _common_options(
        serve,
        "server",
        "address to listen on; 0.0.0.0 listens on every interface, as the original did; "
        ":: on every interface, IPv6 and IPv4",
    )
    faults = serve.add_argument_group(
        "faults",
        "What the server does to its echo on purpose (pyecho.Faults), to test a client "
        "against a bad network; all off by default. [TCP] and [UDP] say which transport "
        "takes each.",
    )
    for setting in FAULTS:
        _add_option(faults, setting, negatable=False)
    _tlscli.add_serve_options(serve)

    client = sub.add_parser(
        "client",
        help="talk to an echo server (like the original client.c)",
        description="Send standard input to an echo server (words in seed mode, lines in "
        "line mode, bytes in raw mode; over UDP each line is one datagram) and print its "
        "echo.",
        epilog=_units.HELP,
    )
    _common_options(client, "client", "server address")
    _add_option(client, TIMEOUT)
    _tlscli.add_client_options(client)

    # Listed for --help; main() hands `pyecho bench ...` to pyecho.bench whole.
    sub.add_parser("bench", help="benchmark the engines against C, asyncio and uvloop")
    return parser


# ---- serve ----


# Why datagrams were dropped, for the log (one line per reason per second).
DROP_WHY = {
    "guard": "reflection guard, see --udp-guard",
    "rate_source": "rate limit per source",
    "rate_global": "global rate limit",
    "full": "no room to send or hold them",
    "error": "send error",
    "fault": "the --drop fault",
    "loop": "an echo loop, see --udp-loop-limit",
    "shutdown": "held by --latency at shutdown",
}


def _datagrams(n: int) -> str:
    return f"{n} datagram{'s' * (n != 1)}"


class _ServeLog:
    """Prints the original server's lines for connection events, and a line
    for each drop event (the engines emit at most one per reason per second)."""

    def __init__(self) -> None:
        self.closed_at_shutdown = 0

    def __call__(self, event: Event) -> None:
        peer = hostport(*event.peer)
        if event.kind == "drop":
            why = DROP_WHY.get(event.reason or "", event.reason)
            say(f"INFO :: dropped {_datagrams(event.count)} ({why}), latest from {peer}")
        elif event.kind == "open":
            say(f"INFO :: Connect with client {peer}")
        elif event.reason == "peer":
            say(f"{MSG_PEER_CLOSED} ({peer})")
        elif event.reason == "quit":
            say(f"{MSG_CLIENT_QUIT} ({peer})")
        elif event.reason == "reset":
            say(f"INFO :: Connection reset by client... BYE ({peer})")
        elif event.reason == "idle":
            say(f"INFO :: Client idle too long, closing... BYE ({peer})")
        elif event.reason == "handshake":
            say(f"INFO :: TLS handshake failed or given up... BYE ({peer})")
        elif event.reason == "shutdown":  # summed up once, at Ctrl+C
            self.closed_at_shutdown += 1
        else:  # the faults' closes: limit, reset_after, refused
            say(f"INFO :: Closed by fault ({event.reason})... BYE ({peer})")


def _udp_summary(stats: Stats) -> str:
    """What a UDP server did, said at Ctrl+C: the drops since the last drop
    line are told nowhere else."""
    line = (
        f"INFO :: {_datagrams(stats.datagrams_in)} received, "
        f"{stats.datagrams_out} sent, {sum(stats.dropped.values())} dropped"
    )
    why = [f"{DROP_WHY[r]}: {n}" for r, n in stats.dropped.items() if n]
    return line + (f" ({'; '.join(why)})" if why else "")


@contextlib.contextmanager
def _sigterm_stops() -> Iterator[None]:
    """While inside, SIGTERM raises _Terminated (once) as SIGINT raises
    KeyboardInterrupt: the server then closes every connection and says
    goodbye. Python runs signal handlers on the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    if not hasattr(signal, "SIGTERM"):  # pragma: no cover - every CPython has it today
        yield
        return

    def on_sigterm(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the goodbye
        raise _Terminated()

    old = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def serve(args: argparse.Namespace) -> int:
    log = _ServeLog()
    try:
        server = EchoServer(
            (args.host, args.port),
            **_settings(args, "server"),
            faults=args.faults,
            on_event=log,
            tls=args.tls_settings,
        )
    except OSError as e:
        raise CliError(_explain(e, args.host, args.port, "listen")) from None
    shown = hostport(*server.server_address)
    if server.transport == "udp":
        what = f"UDP on {shown} ({server.engine} engine)"
    else:
        what = f"on {shown} ({args.mode} mode, {server.engine} engine)"
    _, why = _auto.choose(args.engine)  # why "auto" runs the Python engine, if it does
    with _sigterm_stops():  # from the banner on: a signal may follow it at once
        try:
            say(f"pyecho: serving {what}; press Ctrl+C to stop")
            if why:
                say(f"pyecho: the Python engine runs because {why}")
            if server.faults is not None:
                say(f"pyecho: faults: {_describe(server.faults)}")
            if server.tls is not None:
                for line in _tlscli.banner(server.tls, args.host):
                    say(line)
            server.serve_forever()
        except OSError as e:  # from printing a log line: stdout went away, say
            if e.errno == errno.EPIPE:
                # Python would report the broken stdout again at exit.
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise CliError(f"stopped serving: {e}") from None
        except (KeyboardInterrupt, _Terminated) as e:
            stats = server.stats if server.transport == "udp" else None
            server.close()  # every client socket, then the listening one
            say(MSG_CTRL_C if isinstance(e, KeyboardInterrupt) else MSG_SIGTERM)
            n = log.closed_at_shutdown
            if n:
                say(f"INFO :: closed {n} client connection{'s' * (n != 1)}")
            if stats is not None:
                say(_udp_summary(stats))
            return 0
        finally:
            server.close()
    return 0


# ---- client ----


_SPACE = re.compile(rb"\s+")  # what scanf("%s") skips: space, \t, \n, \v, \f, \r


def _words(chunks: Iterator[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Whitespace-separated words, as the original's scanf("%s") read them,
    in pieces of at most PIECE bytes: (piece, is the end of a word)."""
    word = b""
    for chunk in chunks:
        # The first part continues the current word; each later one follows
        # whitespace, so the word before it is complete.
        for i, part in enumerate(_SPACE.split(chunk)):
            if i > 0 and word:
                yield word, True
                word = b""
            word += part
            while len(word) > PIECE:
                yield word[:PIECE], False
                word = word[PIECE:]
    if word:
        yield word, True


def _lines(chunks: Iterator[bytes]) -> Iterator[tuple[bytes, bool]]:
    """Lines, newline included, in pieces of at most PIECE bytes; an
    unterminated last line gets its newline. (piece, is the end of a line)."""
    line = b""
    for chunk in chunks:
        line += chunk
        while True:
            nl = line.find(b"\n", 0, PIECE)
            if nl >= 0:
                yield line[: nl + 1], True
                line = line[nl + 1 :]
            elif len(line) >= PIECE:
                yield line[:PIECE], False
                line = line[PIECE:]
            else:
                break
    if line:
        yield line + b"\n", True


# Windows' select() takes sockets only, not stdin: a thread reads stdin
# there (and wherever select.poll is missing, as tests/simulate makes it, so
# that this path is tested on Linux too).
STDIN_THREAD = sys.platform == "win32" or not hasattr(select, "poll")
_STDIN_WAIT = 0.05  # seconds between looks at the socket while stdin is quiet


def _stdin_reader(stdin: int, chunks: queue.Queue[bytes]) -> None:
    """The reader thread: stdin's chunks into a small queue, b"" at its end.
    A daemon: still blocked in read() when the client ends, it dies with it."""
    while True:
        try:
            chunk = os.read(stdin, PIECE)
        except OSError:
            chunk = b""
        chunks.put(chunk)  # blocks while the queue is full: bounded memory
        if not chunk:
            return


def _unasked(client: EchoClient, out: Callable[[bytes], None]) -> None:
    """The connection is readable while we wait for input: show what came
    (an echo nobody waited for: lose nothing), or say the server closed."""
    data = _tlscli.recv_nowait(client, PIECE)
    if data is None:  # TLS records that carried no data (session tickets)
        return
    if not data:
        raise ConnectionClosedError(b"")
    out(data)


def _stdin_chunks(client: EchoClient, out: Callable[[bytes], None]) -> Iterator[bytes]:
    """Read stdin as it comes, while watching the connection: if the server
    closes it while we wait for input, say so at once."""
    stdin = sys.stdin.fileno()
    sock = client.fileno()
    if STDIN_THREAD:
        chunks: queue.Queue[bytes] = queue.Queue(maxsize=4)
        threading.Thread(
            target=_stdin_reader, args=(stdin, chunks), name="pyecho-stdin", daemon=True
        ).start()
    while STDIN_THREAD:
        if chunks.empty():
            if select.select([sock], [], [], _STDIN_WAIT)[0]:
                _unasked(client, out)
            continue
        chunk = chunks.get()  # only this thread takes: not empty, so no wait
        if not chunk:
            return
        yield chunk
    while True:
        ready, _, _ = select.select([stdin, sock], [], [])
        if sock in ready:
            _unasked(client, out)
            continue
        chunk = os.read(stdin, PIECE)
        if not chunk:
            return
        yield chunk


# The largest UDP payload (over IPv6; IPv4 allows 65,507 and the OS says so).
MAX_DATAGRAM = 65527


def _stdin_lines() -> Iterator[bytes]:
    """Lines of stdin without their newline, each at most MAX_DATAGRAM bytes
    (a longer one is an error, found before it is all read)."""
    stdin = sys.stdin.buffer
    for n in itertools.count(1):
        line = stdin.readline(MAX_DATAGRAM + 1)
        if not line:
            return
        if line.endswith(b"\n"):
            line = line[:-1]
        elif len(line) > MAX_DATAGRAM:
            raise CliError(f"line {n} is longer than a UDP datagram can be ({MAX_DATAGRAM} bytes)")
        yield line


def _udp_echo(conn: EchoClient, line: bytes, timeout: float | None) -> bytes:
    """Send line as one datagram and wait up to timeout for its echo. Any
    other datagram is skipped: a duplicate of an earlier line's echo can
    arrive after it (the server's duplicate fault, or the network's)."""
    sock = conn.fileno()
    while select.select([sock], [], [], 0)[0]:  # stale echoes: not this line's
        conn.recv(MAX_DATAGRAM + 1)
    deadline = None if timeout is None else time.monotonic() + timeout
    conn.send(line)
    while True:
        if deadline is not None:
            conn.timeout = max(deadline - time.monotonic(), RESOLUTION)
        if conn.recv(MAX_DATAGRAM + 1) == line:
            return line


def _udp_session(conn: EchoClient, args: argparse.Namespace, out: Callable[[bytes], None]) -> int:
    """Each line of stdin one datagram; each echo one line of stdout."""
    where = f"UDP {hostport(args.host, args.port)}"
    if sys.stdin.isatty():
        print(
            f"pyecho: talking to {where}; type lines (each one datagram), Ctrl+D ends",
            file=sys.stderr,
            flush=True,
        )
    n = 0  # lines sent
    try:
        for line in _stdin_lines():
            n += 1
            out(_udp_echo(conn, line, args.timeout) + b"\n")
    except TimeoutError:
        raise CliError(
            f"no echo of line {n} from {where} within {args.timeout}s: the datagram or its "
            "echo was lost (is a UDP echo server there?)"
        ) from None
    except ConnectionRefusedError:
        raise CliError(
            f"nothing listens on {where}: the port is closed (is the server running with --udp?)"
        ) from None
    except OSError as e:
        if e.errno == errno.EMSGSIZE:
            raise CliError(f"line {n} is too long for one datagram to {where}") from None
        raise CliError(f"sending line {n} to {where} failed: {e}") from None
    return 0


def client(args: argparse.Namespace) -> int:
    try:
        conn = EchoClient(
            (args.host, args.port),
            **_settings(args, "client"),
            timeout=args.timeout,
            **_tlscli.context_kw(args.tls_context, args),
        )
    except OSError as e:
        raise CliError(_explain(e, args.host, args.port, "connect")) from None
    where = hostport(args.host, args.port)
    stdout = sys.stdout.buffer

    def out(data: bytes) -> None:
        try:
            stdout.write(data)
            stdout.flush()
        except BrokenPipeError:
            raise _StdoutGone() from None

    if sys.stdin.isatty() and args.transport == "tcp":
        what = "words" if args.mode == "seed" else "lines" if args.mode == "line" else "text"
        if args.quit_word is None:
            ends = "Ctrl+D ends"
        else:
            ends = f"'{args.quit_word.decode(errors='backslashreplace')}' quits"
        print(
            f"pyecho: connected to {where} ({args.mode} mode); type {what}, {ends}",
            file=sys.stderr,
            flush=True,
        )
    with conn:
        try:
            if args.transport == "udp":
                return _udp_session(conn, args, out)
            chunks = _stdin_chunks(conn, out)
            if args.mode == "raw":
                for chunk in chunks:
                    out(conn.echo(chunk))
                return 0
            seed = args.mode == "seed"
            starts = True  # this piece begins a word or line (is not a tail)
            for piece, whole in _words(chunks) if seed else _lines(chunks):
                if starts and whole and is_quit_message(conn.config, piece):
                    conn.send(piece)  # as the original: send the quit word and go
                    return 0
                reply = conn.echo(piece)
                out(reply + b"\n" if seed and whole else reply)
                starts = whole
            return 0
        except _StdoutGone:  # `pyecho client | head`: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 1
        except KeyboardInterrupt:
            say(MSG_CTRL_C)
            return 0
        except (ConnectionClosedError, ConnectionResetError, BrokenPipeError):
            say(MSG_SERVER_GONE)
            return 1
        except TimeoutError:
            raise CliError(
                f"the server at {where} did not answer within {args.timeout}s "
                f"(does it speak --mode {args.mode}?)"
            ) from None
        except OSError as e:
            if e.errno == errno.EPROTO:
                raise CliError(
                    f"the server at {where} echoed more than --mode "
                    f"{args.mode} allows (is it in another mode?)"
                ) from None
            raise CliError(f"connection to {where} failed: {e}") from None


# ---- entry point ----


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:], prog="pyecho bench")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:  # what argparse cannot check alone: the transport, rules between faults
        _check_transport(args, "server" if args.command == "serve" else "client")
        args.faults = _faults(args) if args.command == "serve" else None
        args.tls_settings = _tlscli.server_tls(args) if args.command == "serve" else None
        args.tls_context = _tlscli.client_context(args) if args.command == "client" else None
    except (ValueError, OSError) as e:
        parser.error(str(e))
    try:
        if args.command == "serve":
            return serve(args)
        return client(args)
    except CliError as e:
        print(f"pyecho: error: {e}", file=sys.stderr)
        return e.status
    except NativeUnavailableError as e:
        print(f"pyecho: error: {e}", file=sys.stderr)
        return 1
    except (TypeError, ValueError) as e:
        print(f"pyecho: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl+C before the server or client was up
        say(MSG_CTRL_C)
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
