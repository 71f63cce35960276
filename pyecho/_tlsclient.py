"""A TLS client's context, readable by the native client.

The C client (csrc/client.c over csrc/tls.c) builds its own OpenSSL context,
so it must know everything a client's ``ssl.SSLContext`` holds. Most of it
can be read back from any context (verification, host name check, versions,
options, the trusted CA certificates); what cannot (the client certificate,
ALPN protocols, ciphers, a CA folder) a ``ClientContext`` remembers as it is
set. ``client_context()`` makes one, set up as ``ssl.create_default_context()``
would; it is an ``ssl.SSLContext`` and works with every Python client too.
``native_spec()`` turns one into what the C client takes, or says why it
cannot; ``tls_error()`` turns the C client's failure into the exception
Python's ssl raises for it.
"""

from __future__ import annotations

import functools
import os
import ssl
import sys
from typing import Any, NamedTuple

# X509_V_ERR_HOSTNAME_MISMATCH and X509_V_ERR_IP_ADDRESS_MISMATCH: CPython
# words these two itself (Modules/_ssl.c, fill_and_set_sslerror).
_HOSTNAME_MISMATCH, _IP_MISMATCH = 62, 64


class ClientContext(ssl.SSLContext):
    """An ``ssl.SSLContext`` that remembers what cannot be read back from one,
    so that the native client can build the same context in C."""

    _pyecho_cert: tuple[bytes, bytes | None] | None = None  # PEM texts, as loaded
    _pyecho_alpn: tuple[str, ...] = ()
    _pyecho_ciphers: str | None = None
    _pyecho_capath: str | None = None
    _pyecho_default_paths = False
    _pyecho_unmirrored: str | None = None  # what the C client cannot do

    def load_cert_chain(self, certfile: Any, keyfile: Any = None, password: Any = None) -> None:
        super().load_cert_chain(certfile, keyfile, password)
        if password is not None:
            self._pyecho_unmirrored = "a password-protected client key"
        # Read now, as ssl did: a file changed or gone later changes nothing.
        with open(certfile, "rb") as f:
            cert = f.read()
        key = None
        if keyfile is not None:
            with open(keyfile, "rb") as f:
                key = f.read()
        self._pyecho_cert = (cert, key)

    def set_alpn_protocols(self, alpn_protocols: Any) -> None:
        super().set_alpn_protocols(alpn_protocols)
        self._pyecho_alpn = tuple(alpn_protocols)

    def set_ciphers(self, cipherlist: str, /) -> None:
        super().set_ciphers(cipherlist)
        self._pyecho_ciphers = cipherlist

    def load_verify_locations(
        self, cafile: Any = None, capath: Any = None, cadata: Any = None
    ) -> None:
        # cafile and cadata are loaded at once (get_ca_certs() shows them);
        # a folder is read as certificates are looked up.
        super().load_verify_locations(cafile, capath, cadata)
        if capath is not None:
            self._pyecho_capath = os.path.abspath(os.fspath(capath))

    def set_default_verify_paths(self) -> None:
        super().set_default_verify_paths()
        self._pyecho_default_paths = True

    def set_ecdh_curve(self, name: str, /) -> None:
        super().set_ecdh_curve(name)
        self._pyecho_unmirrored = "set_ecdh_curve()"

    def set_psk_client_callback(self, *args: Any, **kwargs: Any) -> None:
        # Python 3.13 on: the name alone, for the typeshed of older ones.
        getattr(super(), "set_psk_client_callback")(*args, **kwargs)  # noqa: B009
        self._pyecho_unmirrored = "a PSK callback"


def client_context(
    cafile: str | os.PathLike[str] | None = None,
    capath: str | os.PathLike[str] | None = None,
    cadata: str | bytes | None = None,
) -> ClientContext:
    """``ssl.create_default_context(cafile=..., capath=..., cadata=...)``, as a
    ``ClientContext``: the same defaults (this Python's), and the native
    client can speak TLS with it."""
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.options, ctx.verify_flags, ctx.minimum_version, ctx.maximum_version = _defaults()
    ctx.verify_mode, ctx.check_hostname = ssl.CERT_REQUIRED, True
    if cafile or capath or cadata:
        ctx.load_verify_locations(cafile, capath, cadata)
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    # As create_default_context() does, at each call.
    keylog = os.environ.get("SSLKEYLOGFILE")
    if keylog and not sys.flags.ignore_environment:
        ctx.keylog_filename = keylog
    return ctx


@functools.cache
def _defaults() -> tuple[ssl.Options, ssl.VerifyFlags, ssl.TLSVersion, ssl.TLSVersion]:
    """What ssl.create_default_context() sets on this Python, read once: making
    one loads the system's CA certificates (tens of milliseconds)."""
    d = ssl.create_default_context()
    return d.options, d.verify_flags, d.minimum_version, d.maximum_version


class NativeTlsSpec(NamedTuple):
    """What the C client takes (csrc/pyecho.h, echo_tls_client_config)."""

    server_hostname: str
    verify: bool
    check_hostname: bool
    check_common_name: bool
    ca_pem: bytes
    capath: str | None
    default_paths: bool
    cert_pem: bytes | None
    key_pem: bytes | None
    ciphers: str | None
    min_version: int
    max_version: int
    options: int
    verify_flags: int
    alpn: tuple[bytes, ...]


def _version(value: ssl.TLSVersion) -> int:
    # MINIMUM_SUPPORTED and MAXIMUM_SUPPORTED (negative): OpenSSL's own bound.
    return max(0, int(value))


def native_spec(ctx: ssl.SSLContext, server_hostname: str) -> NativeTlsSpec | str:
    """The C client's settings for ctx, or why it cannot have ctx's."""
    if not isinstance(ctx, ClientContext):
        return (
            "the native client builds its TLS context in C and cannot read a client "
            "certificate or ALPN protocols back from a plain ssl.SSLContext: make the "
            "context with pyecho.client_context() (or server.tls.client_context())"
        )
    if ctx.protocol != ssl.PROTOCOL_TLS_CLIENT:
        return f"the native client takes a PROTOCOL_TLS_CLIENT context, not {ctx.protocol!r}"
    unmirrored = ctx._pyecho_unmirrored
    if ctx.keylog_filename:
        unmirrored = "keylog_filename (SSLKEYLOGFILE)"
    elif ctx.post_handshake_auth:
        unmirrored = "post_handshake_auth"
    if unmirrored is not None:
        return f"the native client's TLS does not do {unmirrored}"
    pem = "".join(ssl.DER_cert_to_PEM_cert(der) for der in ctx.get_ca_certs(binary_form=True))
    cert, key = ctx._pyecho_cert or (None, None)
    return NativeTlsSpec(
        server_hostname=server_hostname,
        verify=ctx.verify_mode != ssl.CERT_NONE,
        check_hostname=ctx.check_hostname,
        check_common_name=ctx.hostname_checks_common_name,
        ca_pem=pem.encode("ascii"),
        capath=ctx._pyecho_capath,
        default_paths=ctx._pyecho_default_paths,
        cert_pem=cert,
        key_pem=key,
        ciphers=ctx._pyecho_ciphers,
        min_version=_version(ctx.minimum_version),
        max_version=_version(ctx.maximum_version),
        options=int(ctx.options),
        verify_flags=int(ctx.verify_flags),
        alpn=tuple(p.encode("ascii") for p in ctx._pyecho_alpn),
    )


def tls_error(
    library: str, reason: str, verify: str, verify_code: int, eof: bool, hostname: str
) -> ssl.SSLError:
    """The exception Python's ssl raises for the same failure (the same
    class, attributes and words; "pyecho native client" where CPython puts
    its source line)."""
    where = "(pyecho native client)"
    if eof:  # the peer's FIN within the handshake or a record: OpenSSL 3's words
        eof_error = ssl.SSLEOFError(
            ssl.SSL_ERROR_EOF,
            f"[SSL: UNEXPECTED_EOF_WHILE_READING] EOF occurred in violation of protocol {where}",
        )
        eof_error.library, eof_error.reason = "SSL", "UNEXPECTED_EOF_WHILE_READING"
        return eof_error
    mnemonic = reason.upper().replace(" ", "_")
    text = f"[{library}: {mnemonic}] {reason}" if library else reason or "TLS failed"
    error: ssl.SSLError
    if verify_code:
        if verify_code == _HOSTNAME_MISMATCH:
            verify = f"Hostname mismatch, certificate is not valid for {hostname!r}."
        elif verify_code == _IP_MISMATCH:
            verify = f"IP address mismatch, certificate is not valid for {hostname!r}."
        cert_error = ssl.SSLCertVerificationError(ssl.SSL_ERROR_SSL, f"{text}: {verify} {where}")
        cert_error.verify_code, cert_error.verify_message = verify_code, verify
        error = cert_error
    else:
        error = ssl.SSLError(ssl.SSL_ERROR_SSL, f"{text} {where}")
    error.library, error.reason = library, mnemonic
    return error
