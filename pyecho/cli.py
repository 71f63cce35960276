"""The command line: ``pyecho serve`` and ``pyecho client``, the original
server.c and client.c as a user met them, without their bugs.

Errors are one line on stderr and a non-zero exit status (1 for a failure at
run time, 2 for bad usage), never a traceback.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import select
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ._config import DEFAULT_HOST, DEFAULT_PORT, ENGINES, MODES, ConnectionClosedError, Event
from ._framing import is_quit_message
from ._native import NativeUnavailableError
from .api import EchoClient, EchoServer

# Reading stdin and sending to the server go in pieces of at most this many
# bytes, so no input length can make the client hold more than this.
PIECE = 64 * 1024

# The originals' messages, kept word for word where a user saw them.
MSG_CTRL_C = "\nYou typed Ctrl + C\nBye"
MSG_PEER_CLOSED = "INFO :: Disconnect with client... BYE"
MSG_CLIENT_QUIT = "INFO :: Client want close... BYE"
MSG_SERVER_GONE = "INFO :: Server Disconnected"


class _StdoutGone(Exception):
    """Whoever read our output went away."""


class CliError(Exception):
    """A failure to report as one line, with an exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _hostport(host: str, port: int) -> str:
    """host:port, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def say(*lines: str) -> None:
    print(*lines, sep="\n", flush=True)


def _port(text: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"port must be a number, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port must be between 0 and 65535, got {port}")
    return port


def _positive_int(text: str) -> int:
    try:
        value = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a number of at least 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text}")
    return value


def _explain(exc: OSError, host: str, port: int, action: str) -> str:
    """One clear line for a socket error, naming what failed."""
    where = f"{host}:{port}"
    if isinstance(exc, socket.gaierror):
        return f"unknown host {host!r}: {exc.strerror}"
    if exc.errno == errno.EADDRINUSE:
        return f"port {port} on {host} is already in use (is another server running there?)"
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
    return f"cannot {action} on {where}: {reason[0].lower() + reason[1:]}"


def _common_options(p: argparse.ArgumentParser, host_help: str) -> None:
    p.add_argument("--host", default=DEFAULT_HOST, help=host_help)
    p.add_argument(
        "--port", type=_port, default=DEFAULT_PORT, help=f"TCP port (default {DEFAULT_PORT})"
    )
    p.add_argument("--engine", choices=ENGINES, default="native", help="default: native")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="seed",
        help="seed: the original programs' protocol (default); line: newline-terminated "
        "lines; raw: every byte (RFC 862)",
    )
    p.add_argument("--quit-word", default="exit", help="ends a connection (default: exit)")
    p.add_argument("--bufsize", type=_positive_int, default=99, help="seed mode: bytes per read")
    p.add_argument(
        "--max-line", type=_positive_int, default=64 * 1024, help="line mode: longest line"
    )


def _shared_options(args: argparse.Namespace) -> dict[str, Any]:
    """What server and client must agree on, from _common_options."""
    return {
        "engine": args.engine,
        "mode": args.mode,
        "quit_word": args.quit_word,
        "bufsize": args.bufsize,
        "max_line": args.max_line,
    }


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pyecho", description="A TCP echo server and client (C engine or pure Python)."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the echo server (like the original server.c)")
    _common_options(
        serve,
        "address to listen on (default 127.0.0.1; 0.0.0.0 listens on every interface, "
        "as the original did)",
    )
    serve.add_argument(
        "--max-pending",
        type=_positive_int,
        default=256 * 1024,
        help="bytes of echo queued per client before reading from it pauses",
    )
    serve.add_argument(
        "--max-clients", type=int, default=0, help="connections served at once (0: no limit)"
    )
    serve.add_argument(
        "--idle-timeout", type=_seconds, default=None, help="close clients silent this long"
    )
    serve.add_argument("--backlog", type=_positive_int, default=128, help="listen() backlog")

    client = sub.add_parser("client", help="talk to an echo server (like the original client.c)")
    _common_options(client, "server address (default 127.0.0.1)")
    client.add_argument(
        "--timeout",
        type=_seconds,
        default=10.0,
        help="seconds to wait for the server's echo (default 10)",
    )

    # Listed for --help; main() hands `pyecho bench ...` to pyecho.bench whole.
    sub.add_parser("bench", help="benchmark the engines against C, asyncio and uvloop")
    return parser


# ---- serve ----


class _ServeLog:
    """Prints the original server's lines for connection events."""

    def __init__(self) -> None:
        self.closed_at_shutdown = 0

    def __call__(self, event: Event) -> None:
        peer = _hostport(*event.peer)
        if event.kind == "open":
            say(f"INFO :: Connect with client {peer}")
        elif event.reason == "peer":
            say(f"{MSG_PEER_CLOSED} ({peer})")
        elif event.reason == "quit":
            say(f"{MSG_CLIENT_QUIT} ({peer})")
        elif event.reason == "reset":
            say(f"INFO :: Connection reset by client... BYE ({peer})")
        elif event.reason == "idle":
            say(f"INFO :: Client idle too long, closing... BYE ({peer})")
        else:  # "shutdown": summed up once, at Ctrl+C
            self.closed_at_shutdown += 1


def serve(args: argparse.Namespace) -> int:
    log = _ServeLog()
    try:
        server = EchoServer(
            (args.host, args.port),
            **_shared_options(args),
            max_pending=args.max_pending,
            max_clients=args.max_clients,
            idle_timeout=args.idle_timeout,
            backlog=args.backlog,
            on_event=log,
        )
    except OSError as e:
        raise CliError(_explain(e, args.host, args.port, "listen")) from None
    shown = _hostport(*server.server_address)
    say(
        f"pyecho: serving on {shown} ({args.mode} mode, {args.engine} engine); press Ctrl+C to stop"
    )
    try:
        server.serve_forever()
    except OSError as e:  # from printing a log line: stdout went away, say
        if e.errno == errno.EPIPE:
            # Python would report the broken stdout again at exit.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise CliError(f"stopped serving: {e}") from None
    except KeyboardInterrupt:
        server.close()  # every client socket, then the listening one
        say(MSG_CTRL_C)
        n = log.closed_at_shutdown
        if n:
            say(f"INFO :: closed {n} client connection{'s' * (n != 1)}")
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


def _stdin_chunks(client: EchoClient, out: Callable[[bytes], None]) -> Iterator[bytes]:
    """Read stdin as it comes, while watching the connection: if the server
    closes it while we wait for input, say so at once."""
    stdin = sys.stdin.fileno()
    sock = client.fileno()
    while True:
        ready, _, _ = select.select([stdin, sock], [], [])
        if sock in ready:
            data = client.recv(PIECE)
            if not data:
                raise ConnectionClosedError(b"")
            out(data)  # an echo nobody waited for: show it, lose nothing
            continue
        chunk = os.read(stdin, PIECE)
        if not chunk:
            return
        yield chunk


def client(args: argparse.Namespace) -> int:
    try:
        conn = EchoClient(
            (args.host, args.port),
            **_shared_options(args),
            timeout=args.timeout,
        )
    except OSError as e:
        raise CliError(_explain(e, args.host, args.port, "connect")) from None
    stdout = sys.stdout.buffer

    def out(data: bytes) -> None:
        try:
            stdout.write(data)
            stdout.flush()
        except BrokenPipeError:
            raise _StdoutGone() from None

    if sys.stdin.isatty():
        what = "words" if args.mode == "seed" else "lines" if args.mode == "line" else "text"
        print(
            f"pyecho: connected to {args.host}:{args.port} ({args.mode} mode); type {what}, "
            f"'{args.quit_word}' quits",
            file=sys.stderr,
            flush=True,
        )
    with conn:
        try:
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
                f"the server at {args.host}:{args.port} did not answer within {args.timeout}s "
                f"(does it speak --mode {args.mode}?)"
            ) from None
        except OSError as e:
            if e.errno == errno.EPROTO:
                raise CliError(
                    f"the server at {args.host}:{args.port} echoed more than --mode "
                    f"{args.mode} allows (is it in another mode?)"
                ) from None
            raise CliError(f"connection to {args.host}:{args.port} failed: {e}") from None


# ---- entry point ----


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from .bench import main as bench_main

        return bench_main(argv[1:], prog="pyecho bench")
    args = build_parser().parse_args(argv)
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
