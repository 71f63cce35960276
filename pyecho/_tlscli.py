"""The command line's TLS options (pyecho serve --tls, pyecho client --tls),
apart from pyecho/cli.py so that its hooks there stay small."""

from __future__ import annotations

import argparse
import ipaddress
import ssl
from typing import Any

from ._tls import CERTS, TLS, VERSIONS, ServerTLS
from ._tlsclient import client_context as client_context_for

SERVE_FLAGS = (
    "--tls",
    "--tls-cert",
    "--tls-client-cert",
    "--certfile",
    "--keyfile",
    "--cafile",
    "--alpn",
    "--tls-min-version",
    "--tls-max-version",
)
CLIENT_FLAGS = ("--tls", "--tls-ca", "--tls-certfile", "--tls-servername")


def add_serve_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "TLS",
        "Serve TLS (pyecho.TLS): a throwaway CA, written to a file whose path the banner "
        "shows, issues the server's certificate. Any of these options turns TLS on. [TCP]",
    )
    g.add_argument("--tls", action="store_true", help="serve TLS (default: off)")
    g.add_argument(
        "--tls-cert",
        choices=CERTS,
        default=None,
        help="the server's certificate: valid, or one a client must refuse, as on "
        "badssl.com (default: valid)",
    )
    g.add_argument(
        "--tls-client-cert",
        choices=("optional", "required"),
        default=None,
        help="ask clients for a certificate (mutual TLS); the throwaway CA issues one, "
        "whose file the banner shows (default: not asked for)",
    )
    g.add_argument(
        "--certfile",
        metavar="FILE",
        help="your own certificate chain (PEM) (default: a throwaway one)",
    )
    g.add_argument("--keyfile", metavar="FILE", help="its private key, PEM (default: in certfile)")
    g.add_argument(
        "--cafile",
        metavar="FILE",
        help="CA certificates that verify client certificates, PEM (default: the throwaway CA)",
    )
    g.add_argument(
        "--alpn", metavar="P1,P2", help="ALPN protocols offered, by preference (default: none)"
    )
    g.add_argument("--tls-min-version", choices=VERSIONS, default=None, help="(default: 1.2)")
    g.add_argument("--tls-max-version", choices=VERSIONS, default=None, help="(default: none)")


def add_client_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("TLS", "Speak TLS to the server (Python's ssl). [TCP]")
    g.add_argument("--tls", action="store_true", help="speak TLS (default: off)")
    g.add_argument(
        "--tls-ca",
        metavar="FILE",
        help="trust the CA certificates in FILE (a pyecho server's banner shows its "
        "throwaway CA's) (default: the system's)",
    )
    g.add_argument(
        "--tls-certfile",
        metavar="FILE",
        help="present this client certificate (PEM, with its key) for mutual TLS (default: none)",
    )
    g.add_argument(
        "--tls-servername",
        metavar="NAME",
        help="the name the server's certificate must be for (default: --host)",
    )


def server_tls(args: argparse.Namespace) -> TLS | None:
    """The TLS settings typed, or None; ValueError naming the setting."""
    given = {
        "cert": args.tls_cert,
        "client_cert": args.tls_client_cert,
        "certfile": args.certfile,
        "keyfile": args.keyfile,
        "cafile": args.cafile,
        "alpn": None if args.alpn is None else [p for p in args.alpn.split(",") if p],
        "min_version": args.tls_min_version,
        "max_version": args.tls_max_version,
    }
    typed = {k: v for k, v in given.items() if v is not None}
    if not args.tls and not typed:
        return None
    return TLS(**typed)


def client_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not (args.tls or args.tls_ca or args.tls_certfile or args.tls_servername):
        return None
    ctx = client_context_for(cafile=args.tls_ca)  # one the native client can speak
    if args.tls_certfile:
        ctx.load_cert_chain(args.tls_certfile)
    return ctx


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.partition("%")[0]).is_loopback
    except ValueError:
        return False


def banner(tls: ServerTLS, host: str) -> list[str]:
    """What the serve banner says about TLS."""
    s = tls.settings
    lines = []
    if s.throwaway:
        lines.append(
            f"pyecho: TLS with a throwaway certificate ({s.cert}); its CA, for clients "
            f"(pyecho client --tls --tls-ca FILE, openssl s_client -CAfile FILE): {tls.ca_file}"
        )
        if not _loopback(host):
            lines.append(
                "pyecho: warning: the certificate is a throwaway, made for this run and "
                "removed at exit: for testing, never to protect anything"
            )
    else:
        lines.append(f"pyecho: TLS with {s.certfile}")
    if s.client_cert is not None:
        where = (
            f"; a client certificate from the throwaway CA: {tls.client_certfile}"
            if tls.client_certfile
            else ""
        )
        lines.append(f"pyecho: TLS client certificates {s.client_cert}{where}")
    return lines


def recv_nowait(client: Any, bufsize: int) -> bytes | None:
    """client.recv() of a readable socket; over TLS, None when the records
    that made it readable carried no data (tickets), instead of waiting."""
    core = getattr(client, "_core", None)
    nowait = getattr(core, "recv_nowait", None)
    if nowait is None:
        return bytes(client.recv(bufsize))
    data = nowait(bufsize)
    if data is not None and not data:
        client.server_closed = True
    return None if data is None else bytes(data)


def context_kw(ctx: Any, args: argparse.Namespace) -> dict[str, Any]:
    """EchoClient's keywords for TLS."""
    if ctx is None:
        return {}
    return {"tls": ctx, "server_hostname": args.tls_servername or args.host}
