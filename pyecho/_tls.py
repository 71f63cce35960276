"""TLS settings and the throwaway certificates: shared by both engines.

``TLS`` says what a TLS server presents and asks for (checked once, here,
like the other settings); ``ServerTLS`` makes the files both engines load
(a throwaway CA from ``trustme``, the server's and the client's certificates,
or the user's own files) in a private temporary folder removed at close, and
gives a client what it needs to trust the server (``client_context()``,
``ca_file``, ``ca_pem``). The engines get ``TlsFiles``: paths and integers.
"""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from ._tlsclient import client_context

# The bad certificates of badssl.com, made locally.
CERTS = ("valid", "expired", "not_yet_valid", "wrong_host", "self_signed")
CLIENT_CERTS = (None, "optional", "required")
VERSIONS = ("1.2", "1.3")  # TLS 1.2 or newer only (docs/SECURITY.md)
# The names the server's certificate is for: what a local client connects to.
HOSTS = ("localhost", "127.0.0.1", "::1")
WRONG_HOST = "wrong.host.invalid"  # wrong_host's only name (RFC 6761: never resolves)
INSTALL = 'pip install "pyecho[tls]"'

# TLS versions as OpenSSL numbers them (TLS1_2_VERSION, TLS1_3_VERSION).
_VERSION_NUMBER = {"1.2": 0x0303, "1.3": 0x0304}
# client_cert as the engines take it.
CLIENT_CERT_NONE, CLIENT_CERT_OPTIONAL, CLIENT_CERT_REQUIRED = 0, 1, 2


def _path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path or None, not {type(value).__name__}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path:
        raise ValueError(f"{name} must be a non-empty path")
    if not os.path.isfile(path):
        raise ValueError(f"{name} {path!r} is not a file")
    return path


def _alpn(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"alpn must be a protocol name or a list of them, not {value!r}")
    names = tuple(value)
    for name in names:
        if not isinstance(name, str) or not name.isascii() or not 1 <= len(name) <= 255:
            raise ValueError(f"alpn protocols must be ASCII names of 1 to 255 characters: {name!r}")
    if len(names) > 32:
        raise ValueError(f"alpn takes at most 32 protocols, got {len(names)}")
    return names


@dataclass(frozen=True)
class TLS:
    """What a TLS echo server presents and asks for.

    ``cert``: the server's certificate, from a throwaway CA that
    ``server.tls.client_context()`` trusts: "valid" (for localhost, 127.0.0.1
    and ::1), or one a client must refuse, as on badssl.com: "expired",
    "not_yet_valid", "wrong_host" (for another name only) or "self_signed"
    (not issued by that CA). ``certfile``/``keyfile``: your own certificate
    chain and key (PEM) instead. ``client_cert``: None, "optional" or
    "required": ask for a client certificate (mutual TLS), verified against
    ``cafile`` or, without one, the throwaway CA, which then also issues the
    certificate ``client_context()`` presents. ``alpn``: protocols offered,
    in order of preference. ``min_version``/``max_version``: "1.2" or "1.3"
    (None: no maximum).
    """

    cert: str = "valid"
    client_cert: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    cafile: str | None = None
    alpn: tuple[str, ...] = field(default=())
    min_version: str = "1.2"
    max_version: str | None = None

    def __post_init__(self) -> None:
        if self.cert not in CERTS:
            raise ValueError(f"cert must be one of {', '.join(CERTS)}; got {self.cert!r}")
        if self.client_cert not in CLIENT_CERTS:
            raise ValueError(
                f"client_cert must be None, 'optional' or 'required'; got {self.client_cert!r}"
            )
        for name in ("certfile", "keyfile", "cafile"):
            object.__setattr__(self, name, _path(name, getattr(self, name)))
        object.__setattr__(self, "alpn", _alpn(self.alpn))
        if self.min_version not in VERSIONS:
            raise ValueError(
                f"min_version must be one of {', '.join(VERSIONS)}; got {self.min_version!r} "
                "(TLS 1.2 is the oldest pyecho speaks)"
            )
        if self.max_version is not None and self.max_version not in VERSIONS:
            raise ValueError(
                f"max_version must be None or one of {', '.join(VERSIONS)}; "
                f"got {self.max_version!r}"
            )
        if self.max_version is not None and VERSIONS.index(self.max_version) < VERSIONS.index(
            self.min_version
        ):
            raise ValueError(
                f"max_version {self.max_version} is below min_version {self.min_version}"
            )
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile needs certfile: the certificate it is the key of")
        if self.certfile is not None and self.cert != "valid":
            raise ValueError(
                f"cert={self.cert!r} is a throwaway certificate: it does not go with certfile"
            )
        if self.cafile is not None and self.client_cert is None:
            raise ValueError("cafile verifies client certificates: it needs client_cert")

    @property
    def throwaway(self) -> bool:
        """Is the server's certificate a throwaway one?"""
        return self.certfile is None


def check_tls(tls: Any) -> TLS | None:
    """tls=True, False/None or a TLS, as a TLS or None."""
    if tls is None or tls is False:
        return None
    if tls is True:
        return TLS()
    if not isinstance(tls, TLS):
        raise TypeError(f"tls must be True, False, None or a pyecho.TLS, not {type(tls).__name__}")
    return tls


class TlsFiles(NamedTuple):
    """What both engines load: files, and the settings as integers."""

    certfile: str
    keyfile: str
    cafile: str | None  # verifies client certificates
    client_cert: int  # CLIENT_CERT_*
    min_version: int  # 0x0303, 0x0304
    max_version: int  # 0: none
    alpn: tuple[bytes, ...]


def _trustme() -> Any:
    try:
        import trustme
    except ImportError:
        raise ModuleNotFoundError(
            "tls= with throwaway certificates needs trustme, which makes them: "
            f"{INSTALL} (or give certfile= and keyfile= of your own)",
            name="trustme",
        ) from None
    return trustme


def _self_signed(hosts: tuple[str, ...]) -> tuple[bytes, bytes]:
    """(certificate, key) PEM of a certificate signed by its own key."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pyecho self-signed")])
    now = datetime.datetime.now(datetime.timezone.utc)
    sans: list[x509.GeneralName] = []
    for host in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            sans.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return (
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


class ServerTLS:
    """A TLS server's certificates and what a client needs to trust it:
    ``server.tls``. The throwaway CA and keys live in a private temporary
    folder (mode 0700) removed by close()."""

    def __init__(self, settings: TLS) -> None:
        self.settings = settings
        self.ca_file: str | None = None
        self.ca_pem: str | None = None
        self.client_certfile: str | None = None  # certificate chain and key, PEM
        self._dir: str | None = None
        s = settings
        needs_ca = s.throwaway or (s.client_cert is not None and s.cafile is None)
        try:
            ca = None
            if needs_ca:
                trustme = _trustme()
                self._dir = tempfile.mkdtemp(prefix="pyecho-tls-")  # 0700
                ca = trustme.CA(organization_name="pyecho throwaway CA")
                self.ca_pem = ca.cert_pem.bytes().decode()
                self.ca_file = self._write("ca.pem", ca.cert_pem.bytes())
            if s.throwaway:
                assert ca is not None
                cert, key = self._issue(ca, s.cert)
                self.certfile = self._write("server.pem", cert)
                self.keyfile = self._write("server.key", key)
            else:
                assert s.certfile is not None
                self.certfile = s.certfile
                self.keyfile = s.keyfile or s.certfile
            cafile = s.cafile
            if s.client_cert is not None and cafile is None:
                assert ca is not None
                leaf = ca.issue_cert("client.pyecho.invalid", common_name="pyecho client")
                self.client_certfile = self._write(
                    "client.pem", leaf.private_key_and_cert_chain_pem.bytes()
                )
                cafile = self.ca_file
            self.files = TlsFiles(
                certfile=self.certfile,
                keyfile=self.keyfile,
                cafile=cafile,
                client_cert=CLIENT_CERTS.index(s.client_cert),
                min_version=_VERSION_NUMBER[s.min_version],
                max_version=0 if s.max_version is None else _VERSION_NUMBER[s.max_version],
                alpn=tuple(p.encode() for p in s.alpn),
            )
            # Refuse unusable files now, in the caller, not on the first client.
            server_context(self.files)
        except BaseException:
            self.close()
            raise

    def _write(self, name: str, data: bytes) -> str:
        assert self._dir is not None
        path = os.path.join(self._dir, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return path

    @staticmethod
    def _issue(ca: Any, cert: str) -> tuple[bytes, bytes]:
        now = datetime.datetime.now(datetime.timezone.utc)
        day = datetime.timedelta(days=1)
        if cert == "self_signed":
            return _self_signed(HOSTS)
        hosts: tuple[str, ...] = (WRONG_HOST,) if cert == "wrong_host" else HOSTS
        when: dict[str, datetime.datetime] = {}
        if cert == "expired":
            when = {"not_before": now - 30 * day, "not_after": now - day}
        elif cert == "not_yet_valid":
            when = {"not_before": now + day, "not_after": now + 30 * day}
        leaf = ca.issue_cert(*hosts, **when)
        chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
        return chain, leaf.private_key_pem.bytes()

    def client_context(self) -> ssl.SSLContext:
        """An ``ssl.SSLContext`` for a client of this server: it trusts the
        throwaway CA (only it), checks the host name, and, for mutual TLS,
        presents a client certificate that CA issued."""
        # A pyecho.client_context(): the native client can mirror it.
        if self.ca_file is None:
            ctx = client_context()  # the server's own certificate: the system's CAs
        else:
            ctx = client_context(cafile=self.ca_file)
        if self.client_certfile is not None:
            ctx.load_cert_chain(self.client_certfile)
        if self.settings.alpn:
            ctx.set_alpn_protocols(list(self.settings.alpn))
        return ctx

    @property
    def closed(self) -> bool:
        return self._dir is not None and not os.path.isdir(self._dir)

    def close(self) -> None:
        """Remove the throwaway CA and keys. Safe to call twice."""
        folder, self._dir = self._dir, None
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)

    def __repr__(self) -> str:
        return f"<ServerTLS cert={self.settings.cert!r} ca_file={self.ca_file!r}>"


def server_context(files: TlsFiles) -> ssl.SSLContext:
    """The Python engine's server context; the C core builds the same one
    (csrc/tls.c, tls_ctx_new)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion(files.min_version)
    if files.max_version:
        ctx.maximum_version = ssl.TLSVersion(files.max_version)
    try:
        ctx.load_cert_chain(files.certfile, files.keyfile)
    except ssl.SSLError as e:
        raise ValueError(
            f"cannot use certfile {files.certfile!r} with keyfile {files.keyfile!r}: {e}"
        ) from None
    if files.client_cert != CLIENT_CERT_NONE:
        ctx.verify_mode = (
            ssl.CERT_REQUIRED if files.client_cert == CLIENT_CERT_REQUIRED else ssl.CERT_OPTIONAL
        )
        assert files.cafile is not None
        ctx.load_verify_locations(cafile=files.cafile)
    if files.alpn:
        ctx.set_alpn_protocols([p.decode() for p in files.alpn])
    return ctx


def alpn_wire(protocols: tuple[bytes, ...]) -> bytes:
    """ALPN protocols in the wire format OpenSSL takes (length-prefixed)."""
    return b"".join(bytes([len(p)]) + p for p in protocols)
