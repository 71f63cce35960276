"""TLS echo (issue 18): both engines, proven alike, against clients nobody
here wrote (Python's ssl, asyncio, openssl s_client, socat)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

import pyecho
from conftest import ENGINE_PAIRS, ENGINES, LOOPBACK, Recorder, wait_for
from differential import run_matrix

pytest.importorskip("trustme", reason="the TLS tests need trustme: pip install 'pyecho[tls]'")

HOST = "127.0.0.1"

# What Python's ssl says for each bad certificate of badssl.com.
BAD_CERTS = [
    ("expired", "certificate has expired"),
    ("not_yet_valid", "certificate is not yet valid"),
    ("wrong_host", "Hostname mismatch, certificate is not valid for 'localhost'"),
    ("self_signed", "self-signed certificate"),
]


# The X509_V_ERR_* code of each (ssl.SSLCertVerificationError.verify_code).
VERIFY_CODES = {"expired": 10, "not_yet_valid": 9, "wrong_host": 62, "self_signed": 18}


@pytest.fixture(params=ENGINES)
def client_engine(request: pytest.FixtureRequest) -> str:
    """The engine of pyecho's own TLS client (the server's is ``engine``)."""
    return str(request.param)


def tls_client(
    server: pyecho.EchoServer, client_engine: str, ctx: ssl.SSLContext | None = None, **kw: Any
) -> pyecho.EchoClient:
    """pyecho's client on client_engine, trusting the server by default;
    it must run on that engine (the native one speaks TLS in C)."""
    assert server.tls is not None
    kw.setdefault("timeout", 10)
    tls = ctx or server.tls.client_context()
    client = pyecho.EchoClient(server.server_address, engine=client_engine, tls=tls, **kw)
    assert client.engine == client_engine
    return client


def tls_server(engine: str, tls: Any = True, **kw: Any) -> pyecho.EchoServer:
    kw.setdefault("mode", "raw")
    return pyecho.EchoServer((HOST, 0), engine=engine, tls=tls, **kw)


def tls_connect(
    server: pyecho.EchoServer,
    ctx: ssl.SSLContext | None = None,
    timeout: float = 10,
    hostname: str = HOST,
) -> ssl.SSLSocket:
    """A blocking ssl socket of Python's own, handshake done."""
    assert server.tls is not None
    raw = socket.create_connection(server.server_address, timeout=timeout)
    try:
        return (ctx or server.tls.client_context()).wrap_socket(raw, server_hostname=hostname)
    except BaseException:
        raw.close()
        raise


def recv_exactly(sock: ssl.SSLSocket, n: int) -> bytes:
    got = bytearray()
    while len(got) < n:
        chunk = sock.recv(n - len(got))
        if not chunk:
            break
        got += chunk
    return bytes(got)


def read_line(stream: Any, timeout: float) -> bytes:
    """One line from a pipe, or what came within timeout seconds."""
    import selectors

    got = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        while not got.endswith(b"\n") and time.monotonic() < deadline:
            if sel.select(max(0.0, deadline - time.monotonic())):
                chunk = os.read(stream.fileno(), 4096)
                if not chunk:
                    break
                got += chunk
    return got


# ---- the settings -----------------------------------------------------------------


def test_tls_settings_are_checked_naming_the_setting() -> None:
    with pytest.raises(ValueError, match="^cert must be one of valid, expired"):
        pyecho.TLS(cert="bad")
    with pytest.raises(ValueError, match="^client_cert must be"):
        pyecho.TLS(client_cert="yes")
    with pytest.raises(ValueError, match="^min_version must be one of 1.2, 1.3"):
        pyecho.TLS(min_version="1.1")
    with pytest.raises(ValueError, match="^max_version 1.2 is below min_version 1.3"):
        pyecho.TLS(min_version="1.3", max_version="1.2")
    with pytest.raises(ValueError, match="^certfile '/nonexistent' is not a file"):
        pyecho.TLS(certfile="/nonexistent")
    with pytest.raises(ValueError, match="^cafile verifies client certificates"):
        pyecho.TLS(cafile=__file__)
    with pytest.raises(ValueError, match="^alpn protocols must be"):
        pyecho.TLS(alpn=[""])
    with pytest.raises(TypeError, match="^tls must be True, False, None or a pyecho.TLS"):
        pyecho.EchoServer((HOST, 0), tls="yes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tls does not apply to UDP"):
        pyecho.EchoServer((HOST, 0), transport="udp", tls=True)
    with pytest.raises(ValueError, match="need a TLS server"):
        pyecho.EchoServer((HOST, 0), faults=pyecho.Faults(handshake_delay=1))
    assert pyecho.TLS().min_version == "1.2"  # TLS 1.2 or newer by default


def test_without_trustme_tls_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "trustme", None)
    with pytest.raises(ModuleNotFoundError, match=r'pip install "pyecho\[tls\]"'):
        pyecho.EchoServer((HOST, 0), engine="python", tls=True)


def test_the_throwaway_keys_are_private_and_removed_at_close(engine: str) -> None:
    server = tls_server(engine)
    assert server.tls is not None and server.tls.ca_file is not None
    folder = os.path.dirname(server.tls.ca_file)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(server.tls.files.keyfile).st_mode) == 0o600
    assert server.tls.ca_pem is not None and server.tls.ca_pem.startswith("-----BEGIN CERT")
    server.close()
    assert not os.path.exists(folder)


def test_own_certificate_files(engine: str, tmp_path: Any) -> None:
    """certfile/keyfile of one's own; cafile for client certificates."""
    import trustme

    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    cert, key, cafile = tmp_path / "c.pem", tmp_path / "k.pem", tmp_path / "ca.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    ca.cert_pem.write_to_path(str(cafile))
    client_leaf = ca.issue_cert("client.example.invalid")
    settings = pyecho.TLS(certfile=cert, keyfile=key, client_cert="required", cafile=cafile)
    with tls_server(engine, settings).start() as server:
        ctx = ssl.create_default_context(cafile=str(cafile))
        client_leaf.configure_cert(ctx)
        with tls_connect(server, ctx) as s:
            s.sendall(b"mine")
            assert recv_exactly(s, 4) == b"mine"
        assert server.tls is not None and server.tls.ca_file is None  # nothing thrown away


def test_unusable_files_are_refused_at_once(engine: str, tmp_path: Any) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(ValueError, match="cannot use certfile"):
        tls_server(engine, pyecho.TLS(certfile=bad))


# ---- the echo ---------------------------------------------------------------------


@pytest.mark.parametrize("engine, client_engine", ENGINE_PAIRS)
def test_one_mebibyte_raw_is_echoed_byte_identical(engine: str, client_engine: str) -> None:
    data = os.urandom(1 << 20)
    with tls_server(engine).start() as server:
        with tls_client(server, client_engine, mode="raw", timeout=20) as c:
            assert c.echo(data) == data
            assert c.tls_version == "TLSv1.3" and c.alpn_protocol is None
        wait_for(lambda: server.stats.closed["peer"] == 1, 10, "the close")
        stats = server.stats
        assert (stats.bytes_in, stats.bytes_out) == (len(data), len(data))  # the plaintext


class RecordClient:
    """A TLS client over memory BIOs: its records go out in one send(), as
    many as asked for, so the server finds them all at once."""

    def __init__(self, server: pyecho.EchoServer, timeout: float = 10) -> None:
        assert server.tls is not None
        self.sock = socket.create_connection(server.server_address, timeout=timeout)
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = server.tls.client_context().wrap_bio(
            self.incoming, self.outgoing, server_hostname=HOST
        )
        for _ in range(100):
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.outgoing.read())
                self.incoming.write(self.sock.recv(65536))
        self.sock.sendall(self.outgoing.read())

    def send_records(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            self.tls.write(piece)  # one record each
        self.sock.sendall(self.outgoing.read())

    def recv_exactly(self, n: int) -> bytes:
        got = bytearray()
        for _ in range(100_000):
            if len(got) >= n:
                break
            try:
                got += self.tls.read(n - len(got))
            except ssl.SSLWantReadError:
                raw = self.sock.recv(65536)
                if not raw:
                    break
                self.incoming.write(raw)
        return bytes(got)


@pytest.mark.parametrize("max_pending", [1, 100_000])
def test_records_arriving_together_are_all_echoed(engine: str, max_pending: int) -> None:
    """Many records in one segment, more than one turn of reading takes (64
    KiB), with the echo's queue full after the first record (max_pending 1):
    the server still echoes every one, in order, and nothing more."""
    pieces = [bytes([i % 251]) * (1000 + i) for i in range(150)]  # 225 KiB
    data = b"".join(pieces)
    with tls_server(engine, max_pending=max_pending).start() as server:
        c = RecordClient(server)
        with c.sock:
            c.send_records(pieces)
            assert c.recv_exactly(len(data)) == data
            c.send_records([b"and after"])
            assert c.recv_exactly(9) == b"and after"
        wait_for(lambda: server.stats.bytes_in == len(data) + 9, 10, "the input counted")
        assert server.stats.bytes_out == len(data) + 9


def test_a_bad_record_resets_after_the_echo_of_those_before_it(engine: str) -> None:
    """Good records and then a forged one, all in one segment: the echo of
    the good ones still goes out, then the alert, then the reset (the C core
    sent its turn's batch of records with none of them)."""
    with tls_server(engine, mode="raw").start() as server:
        c = RecordClient(server)
        with c.sock:
            c.tls.write(b"hello one")
            c.tls.write(b"hello two")
            good = c.outgoing.read()
            c.tls.write(b"forged")
            bad = bytearray(c.outgoing.read())
            bad[-1] ^= 0xFF  # its tag no longer matches
            c.sock.sendall(good + bytes(bad))
            assert c.recv_exactly(18) == b"hello onehello two"
            with pytest.raises(ssl.SSLError, match="BAD_RECORD_MAC"):
                c.recv_exactly(1)
        wait_for(lambda: server.stats.closed["reset"] == 1, 10, "the reset")
        assert (server.stats.bytes_in, server.stats.bytes_out) == (18, 18)


def test_the_differential_scenarios_over_tls() -> None:
    """Seed mode with its quit word, and line mode with a half-close (TLS
    close_notify), over both engines: the same transcript, events and stats."""

    def seed(server: pyecho.EchoServer, client: Any) -> Any:
        assert server.tls is not None
        with client(tls=server.tls.client_context()) as c:
            return [c.echo(b"hello"), c.echo(b"x" * 250), c.echo(b"exit"), c.server_closed]

    def line(server: pyecho.EchoServer, client: Any) -> Any:
        assert server.tls is not None
        with client(tls=server.tls.client_context()) as c:
            c.send(b"one\ntw")
            first = c.recv(4)
            c.shutdown_write()
            rest = b""
            while chunk := c.recv(100):
                rest += chunk
            return first, rest

    assert run_matrix(seed, tls=True, mode="seed")["transcript"] == [
        b"hello",
        b"x" * 250,
        b"",  # the quit word is not echoed
        True,
    ]
    assert run_matrix(line, tls=True, mode="line")["transcript"] == (b"one\n", b"tw")


def test_the_faults_act_alike_over_tls() -> None:
    """slice cuts the records on the wire into 3-byte segments (the client
    reassembles them), latency and limit act on the echo: both engines alike."""

    def scenario(server: pyecho.EchoServer, client: Any) -> Any:
        assert server.tls is not None
        with client(tls=server.tls.client_context()) as c:
            first = c.echo(b"a" * 100)
            try:
                c.echo(b"b" * 100)
            except pyecho.ConnectionClosedError as e:
                return first, e.partial
            return first, None

    faults = pyecho.Faults(slice=3, latency=0.01, limit=150, seed=7)
    result = run_matrix(scenario, tls=True, mode="raw", faults=faults)
    assert result["transcript"] == (b"a" * 100, b"b" * 50)
    assert result["stats"]["closed"]["limit"] == 1


# ---- real clients -----------------------------------------------------------------


def test_python_ssl_and_asyncio_clients(engine: str) -> None:
    with tls_server(engine, mode="line").start() as server:
        with tls_connect(server) as s:
            s.sendall(b"plain ssl\n")
            assert recv_exactly(s, 10) == b"plain ssl\n"
            assert s.version() in ("TLSv1.2", "TLSv1.3")

        async def talk() -> bytes:
            assert server.tls is not None
            reader, writer = await asyncio.open_connection(
                *server.server_address, ssl=server.tls.client_context()
            )
            writer.write(b"asyncio\n")
            line = await asyncio.wait_for(reader.readline(), 10)
            writer.close()
            await writer.wait_closed()
            return line

        assert asyncio.run(talk()) == b"asyncio\n"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_s_client_verifies_and_gets_its_line_back(engine: str) -> None:
    with tls_server(engine, mode="line").start() as server:
        assert server.tls is not None and server.tls.ca_file is not None
        host, port = server.server_address
        command = ["openssl", "s_client", "-connect", f"{host}:{port}"]
        command += ["-CAfile", server.tls.ca_file, "-verify_return_error", "-verify_ip", host]
        # -no_ign_eof: it closes at the end of its input, which comes once
        # the echo is back (before, it would close without waiting for it).
        with subprocess.Popen(
            [*command, "-quiet", "-no_ign_eof"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(b"hello from s_client\n")
                proc.stdin.flush()
                line = read_line(proc.stdout, 20)
                proc.stdin.close()
                assert proc.wait(20) == 0
            finally:
                proc.kill()
            assert line == b"hello from s_client\n"


@pytest.mark.skipif(shutil.which("socat") is None, reason="needs socat (apt-get install socat)")
def test_socat_openssl_client(engine: str) -> None:
    with tls_server(engine, mode="line").start() as server:
        assert server.tls is not None and server.tls.ca_file is not None
        host, port = server.server_address
        run = subprocess.run(
            ["socat", "-t", "2", "-", f"OPENSSL:{host}:{port},cafile={server.tls.ca_file}"],
            input=b"hello from socat\n",
            capture_output=True,
            timeout=20,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout == b"hello from socat\n"


@pytest.mark.parametrize("cert, message", BAD_CERTS, ids=[c for c, _ in BAD_CERTS])
def test_bad_certificates_fail_in_the_client(engine: str, cert: str, message: str) -> None:
    # The name a user connects to: the one the certificate must be for.
    name = "localhost"
    with tls_server(engine, pyecho.TLS(cert=cert)).start() as server:
        with pytest.raises(ssl.SSLCertVerificationError, match=message):
            tls_connect(server, hostname=name)

        async def talk() -> None:
            assert server.tls is not None
            await asyncio.open_connection(
                *server.server_address, ssl=server.tls.client_context(), server_hostname=name
            )

        with pytest.raises(ssl.SSLCertVerificationError, match=message):
            asyncio.run(talk())
        # And through pyecho's own client.
        assert server.tls is not None
        with pytest.raises(ssl.SSLCertVerificationError, match=message):
            pyecho.EchoClient(
                server.server_address, tls=server.tls.client_context(), server_hostname=name
            )
        wait_for(lambda: server.stats.closed["handshake"] == 3, 10, "three failed handshakes")
        assert server.stats.bytes_in == 0


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_openssl_s_client_refuses_an_expired_certificate(engine: str) -> None:
    with tls_server(engine, pyecho.TLS(cert="expired")).start() as server:
        assert server.tls is not None and server.tls.ca_file is not None
        host, port = server.server_address
        run = subprocess.run(
            [
                "openssl",
                "s_client",
                "-connect",
                f"{host}:{port}",
                "-CAfile",
                server.tls.ca_file,
                "-verify_return_error",
            ],
            input=b"",
            capture_output=True,
            timeout=20,
        )
        assert run.returncode != 0
        assert b"certificate has expired" in run.stdout + run.stderr


# ---- mutual TLS, ALPN, versions ---------------------------------------------------


def test_client_cert_required(engine: str) -> None:
    with tls_server(engine, pyecho.TLS(client_cert="required")).start() as server:
        assert server.tls is not None
        with tls_connect(server) as s:  # client_context() presents the certificate
            s.sendall(b"mutual")
            assert recv_exactly(s, 6) == b"mutual"
        anonymous = ssl.create_default_context(cafile=server.tls.ca_file)
        # TLS 1.3: the client's side of the handshake ends first; the
        # server's refusal arrives as an alert on the first read.
        with pytest.raises(ssl.SSLError, match="certificate required|CERTIFICATE_REQUIRED"):
            with tls_connect(server, anonymous) as s:
                s.sendall(b"anyone?")
                s.recv(10)
        wait_for(lambda: server.stats.closed["handshake"] == 1, 10, "the refusal")


def test_client_cert_optional(engine: str) -> None:
    with tls_server(engine, pyecho.TLS(client_cert="optional")).start() as server:
        assert server.tls is not None
        anonymous = ssl.create_default_context(cafile=server.tls.ca_file)
        for ctx in (anonymous, server.tls.client_context()):
            with tls_connect(server, ctx) as s:
                s.sendall(b"either")
                assert recv_exactly(s, 6) == b"either"


def test_alpn_and_versions(engine: str) -> None:
    settings = pyecho.TLS(alpn=["h2", "echo"], min_version="1.3")
    with tls_server(engine, settings).start() as server:
        assert server.tls is not None
        ctx = server.tls.client_context()
        ctx.set_alpn_protocols(["echo"])
        with tls_connect(server, ctx) as s:
            assert (s.selected_alpn_protocol(), s.version()) == ("echo", "TLSv1.3")
        old = server.tls.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError, match="(?i)protocol version"):
            tls_connect(server, old)
    with tls_server(engine, pyecho.TLS(max_version="1.2")).start() as server:
        with tls_connect(server) as s:
            assert s.version() == "TLSv1.2"
            s.sendall(b"twelve")
            assert recv_exactly(s, 6) == b"twelve"


# ---- pyecho's own client over TLS: both engines -------------------------------------


def test_pyecho_client_server_name_too_long_for_sni(client_engine: str) -> None:
    """A name of valid labels too long for SNI (over 255 bytes): OpenSSL
    refuses it before the handshake, and both clients raise what
    ssl.wrap_socket() raises (the C client said "out of memory")."""
    with tls_server("python").start() as server:
        name = "x." * 130 + "localhost"
        with pytest.raises(ssl.SSLError, match=r"^\[SSL: SSL3_EXT_INVALID_SERVERNAME\]") as e:
            tls_client(server, client_engine, server_hostname=name)
        assert (e.value.library, e.value.reason) == ("SSL", "SSL3_EXT_INVALID_SERVERNAME")
        with tls_client(server, client_engine, mode="raw") as c:  # the next one is served
            assert c.echo(b"after") == b"after"


@pytest.mark.parametrize("engine, client_engine", ENGINE_PAIRS)
@pytest.mark.parametrize("cert, message", BAD_CERTS, ids=[c for c, _ in BAD_CERTS])
def test_pyecho_client_refuses_bad_certificates(
    engine: str, client_engine: str, cert: str, message: str
) -> None:
    """The C client raises what Python's ssl raises: the class, the
    verification code and the message."""
    with tls_server(engine, pyecho.TLS(cert=cert)).start() as server:
        with pytest.raises(ssl.SSLCertVerificationError, match=message) as caught:
            tls_client(server, client_engine, server_hostname="localhost")
        error = caught.value
        assert (error.verify_code, error.library, error.reason) == (
            VERIFY_CODES[cert],
            "SSL",
            "CERTIFICATE_VERIFY_FAILED",
        )
        assert str(error).startswith(
            f"[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: {error.verify_message}"
        )
        wait_for(lambda: server.stats.closed["handshake"] == 1, 10, "the failed handshake")


@pytest.mark.parametrize("engine, client_engine", ENGINE_PAIRS)
def test_pyecho_client_alpn_versions_and_ciphers(engine: str, client_engine: str) -> None:
    settings = pyecho.TLS(alpn=["h2", "echo"])
    with tls_server(engine, settings, mode="line").start() as server:
        assert server.tls is not None
        ctx = server.tls.client_context()
        ctx.set_alpn_protocols(["echo"])
        with tls_client(server, client_engine, ctx, mode="line") as c:
            assert (c.tls_version, c.alpn_protocol) == ("TLSv1.3", "echo")
            assert c.echo(b"alpn\n") == b"alpn\n"
        old = server.tls.client_context()
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        old.set_ciphers("ECDHE+CHACHA20")
        with tls_client(server, client_engine, old, mode="line") as c:
            # client_context() offers the server's protocols: its first is chosen.
            assert (c.tls_version, c.alpn_protocol) == ("TLSv1.2", "h2")
            assert c.echo(b"twelve\n") == b"twelve\n"
        wrong = server.tls.client_context()
        wrong.set_ciphers("AES128-SHA")  # no such TLS 1.2 suite at security level 2
        wrong.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(ssl.SSLError, match="(?i)handshake failure|no cipher"):
            tls_client(server, client_engine, wrong)


@pytest.mark.parametrize("engine, client_engine", ENGINE_PAIRS)
def test_pyecho_client_mutual_tls(engine: str, client_engine: str) -> None:
    with tls_server(engine, pyecho.TLS(client_cert="required")).start() as server:
        assert server.tls is not None
        with tls_client(server, client_engine, mode="raw") as c:  # presents its certificate
            assert c.echo(b"mutual") == b"mutual"
        anonymous = pyecho.client_context(cafile=server.tls.ca_file)
        # TLS 1.3: the client's side of the handshake ends first; the
        # server's refusal comes as an alert on the first read.
        with tls_client(server, client_engine, anonymous, mode="raw") as c:
            with pytest.raises(ssl.SSLError, match="tlsv13 alert certificate required") as e:
                c.echo(b"anyone?")
            assert e.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
        wait_for(lambda: server.stats.closed["handshake"] == 1, 10, "the refusal")


def test_client_context_is_create_default_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pyecho.client_context() sets what ssl.create_default_context() sets on
    this Python (read once and remembered), with the same CAs, and reads
    SSLKEYLOGFILE at each call as it does."""

    def settings(ctx: ssl.SSLContext) -> tuple[object, ...]:
        return (
            ctx.protocol, ctx.options, ctx.verify_flags, ctx.verify_mode, ctx.check_hostname,
            ctx.minimum_version, ctx.maximum_version, ctx.keylog_filename,
            sorted(map(str, ctx.get_ca_certs())),
        )  # fmt: skip

    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)
    for _ in range(2):  # the first call reads the defaults, the second remembers them
        assert settings(pyecho.client_context()) == settings(ssl.create_default_context())
    with tls_server("python", mode="raw") as server:
        assert server.tls is not None
        ca = server.tls.ca_file
        assert settings(pyecho.client_context(cafile=ca)) == settings(
            ssl.create_default_context(cafile=ca)
        )
        assert len(pyecho.client_context(cadata=server.tls.ca_pem).get_ca_certs()) == 1
    monkeypatch.setenv("SSLKEYLOGFILE", str(tmp_path / "keys"))
    assert pyecho.client_context().keylog_filename == str(tmp_path / "keys")


@pytest.mark.parametrize("engine, client_engine", ENGINE_PAIRS)
def test_pyecho_client_unverified_certificate_is_not_the_failure(
    engine: str, client_engine: str
) -> None:
    """With verification off, a certificate that would not verify (its
    result is kept all the same) is not why a later failure happened: the
    server's refusal is an ssl.SSLError, not an SSLCertVerificationError."""
    settings = pyecho.TLS(cert="self_signed", client_cert="required")
    with tls_server(engine, settings).start() as server:
        anonymous = pyecho.client_context()
        anonymous.check_hostname = False
        anonymous.verify_mode = ssl.CERT_NONE
        with tls_client(server, client_engine, anonymous, mode="raw") as c:
            with pytest.raises(ssl.SSLError, match="tlsv13 alert certificate required") as e:
                c.echo(b"anyone?")
        assert type(e.value) is ssl.SSLError
        assert e.value.reason == "TLSV13_ALERT_CERTIFICATE_REQUIRED"
        assert "self-signed" not in str(e.value)


def test_pyecho_client_which_contexts_run_natively(client_engine: str) -> None:
    """A plain ssl.SSLContext cannot be read back whole: "auto" runs the
    Python client with it, "native" says why not. tls=True trusts the
    system's CAs (not the throwaway one); a context that verifies nothing
    accepts a self-signed certificate, in both clients."""
    with tls_server("python", pyecho.TLS(cert="self_signed"), mode="raw").start() as server:
        assert server.tls is not None
        plain = ssl.create_default_context()
        plain.check_hostname, plain.verify_mode = False, ssl.CERT_NONE
        if client_engine == "native":
            with pytest.raises(pyecho.NativeUnavailableError, match="pyecho.client_context"):
                pyecho.EchoClient(server.server_address, engine="native", tls=plain)
        with pyecho.EchoClient(server.server_address, tls=plain) as c:  # auto
            assert c.engine == "python" and c.echo(b"plain") == b"plain"
        with pytest.raises(ssl.SSLCertVerificationError, match="self-signed certificate"):
            tls_client(server, client_engine, True)  # type: ignore[arg-type]
        logging = server.tls.client_context()
        logging.keylog_filename = os.devnull  # the C client keeps no key log
        if client_engine == "native":
            with pytest.raises(pyecho.NativeUnavailableError, match="keylog_filename"):
                pyecho.EchoClient(server.server_address, engine="native", tls=logging)
        trusting = pyecho.client_context()
        trusting.check_hostname, trusting.verify_mode = False, ssl.CERT_NONE
        with tls_client(server, client_engine, trusting, mode="raw") as c:
            assert c.echo(b"anyone") == b"anyone"
    with tls_server("python", mode="raw").start() as server:
        # The throwaway CA is not among the system's.
        with pytest.raises(ssl.SSLCertVerificationError, match="unable to get local issuer"):
            tls_client(server, client_engine, True)  # type: ignore[arg-type]


@pytest.mark.parametrize("engine, client_engine", ENGINE_PAIRS)
def test_pyecho_client_sees_surplus_over_tls(engine: str, client_engine: str) -> None:
    """A raw server answers a line client with more than its framing allows:
    both clients say so, naming the bytes beyond the echo (decrypted)."""
    with tls_server(engine, mode="raw").start() as server:
        with tls_client(server, client_engine, mode="line") as c:
            with pytest.raises(OSError) as caught:
                c.echo(b"hi\nthere")
    assert str(caught.value) == (
        "[Errno 71] protocol error: the server sent more than its framing allows: "
        "expected 3 bytes of echo, got b'hi\\n', then b'there' "
        "(is it in another mode, or not an echo server?)"
    )


def test_pyecho_client_certificate_is_read_at_load_cert_chain(
    tmp_path: Path, client_engine: str
) -> None:
    """Both clients present the certificate and key that were in the files
    at load_cert_chain() (Python's ssl reads them then): files removed
    since change nothing. The key in the certificate's file or apart."""
    with tls_server("python", pyecho.TLS(client_cert="required")).start() as server:
        assert server.tls is not None and server.tls.client_certfile is not None
        pem = Path(server.tls.client_certfile).read_text()
        key = re.search(
            r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----\n", pem, re.S
        )
        assert key is not None
        (tmp_path / "both.pem").write_text(pem)
        # The leaf, then its chain (here the CA's own certificate).
        chain = pem.replace(key[0], "") + server.tls.ca_pem
        (tmp_path / "cert.pem").write_text(chain)
        (tmp_path / "key.pem").write_text(key[0])
        together = pyecho.client_context(cafile=server.tls.ca_file)
        together.load_cert_chain(tmp_path / "both.pem")
        apart = pyecho.client_context(cafile=server.tls.ca_file)
        apart.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
        for name in ("both.pem", "cert.pem", "key.pem"):
            (tmp_path / name).unlink()
        for ctx in (together, apart):
            with tls_client(server, client_engine, ctx, mode="raw") as c:
                assert c.echo(b"present") == b"present"
        assert server.stats.closed["handshake"] == 0


def test_pyecho_client_reads_the_echo_of_a_server_that_resets_at_the_quit_word(
    client_engine: str,
) -> None:
    """A TLS server (not pyecho's, which lingers) that echoes the line before
    the quit word and closes with the client's later bytes unread: a reset,
    while the client is still sending. The send's failure is the server
    closing on the quit word; the echo already in the socket is read, by
    both clients. (The C client stopped reading at its failed send: a
    BrokenPipeError 13 times in 20; the Python client got ssl.SSLEOFError,
    CPython's word for that EPIPE, which it did not take for the close.)"""
    import array
    import fcntl
    import termios
    import threading

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert(HOST).configure_cert(server_ctx)
    client_ctx = pyecho.client_context()
    ca.configure_trust(client_ctx)

    def serve(listener: socket.socket) -> None:
        listener.settimeout(10)
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as s:
            s.settimeout(10)
            got = b""
            while b"exit\n" not in got:
                got += s.recv(65536)
            s.sendall(got[: got.index(b"exit\n")])
            # Until the client's kernel has the echo: a reset discards what
            # is not sent yet (Nagle may hold it back under load).
            unacked, deadline = array.array("i", [1]), time.monotonic() + 10
            while time.monotonic() < deadline:
                fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, unacked)
                if unacked[0] == 0:
                    break
                time.sleep(0.001)
        # closed with input unread: the kernel sends a reset

    for _ in range(3):
        with socket.create_server((HOST, 0)) as listener:
            thread = threading.Thread(target=serve, args=(listener,), daemon=True)
            thread.start()
            with pyecho.EchoClient(
                listener.getsockname(), engine=client_engine, tls=client_ctx, mode="line",
                timeout=10,
            ) as c:  # fmt: skip
                assert c.engine == client_engine
                assert c.echo(b"hello\nexit\n" + b"x" * 2_000_000) == b"hello\n"
                assert c.server_closed
            thread.join(timeout=10)
            assert not thread.is_alive()


def _peer(answer: bytes) -> tuple[socket.socket, Any]:
    """A listening socket whose one connection reads the ClientHello, sends
    answer and closes; and its thread."""
    import threading

    listener = socket.create_server((HOST, 0))

    def serve() -> None:
        listener.settimeout(10)
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            conn.recv(4096)
            with contextlib.suppress(OSError):
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


# A peer that is no TLS server, and what both clients say of it.
NOT_TLS = [
    (b"HTTP/1.1 400 Bad Request\r\n\r\n", ssl.SSLError, "WRONG_VERSION_NUMBER"),
    (b"", ssl.SSLEOFError, "UNEXPECTED_EOF_WHILE_READING"),  # closes at once
    (b"\x16\x03\x03\xff\xff" + b"\x00" * 70000, ssl.SSLError, "PACKET_LENGTH_TOO_LONG"),
]


@pytest.mark.parametrize("answer, error, reason", NOT_TLS, ids=["http", "close", "huge"])
def test_pyecho_client_against_a_peer_that_is_no_tls_server(
    client_engine: str, answer: bytes, error: type[Exception], reason: str
) -> None:
    listener, thread = _peer(answer)
    with listener:
        with pytest.raises(error) as caught:
            pyecho.EchoClient(
                listener.getsockname(),
                engine=client_engine,
                tls=pyecho.client_context(),
                timeout=5,
            )
        assert isinstance(caught.value, ssl.SSLError)
        assert (caught.value.library, caught.value.reason) == ("SSL", reason)
        thread.join(10)
    # And a TCP echo server: it echoes the ClientHello back.
    with pyecho.EchoServer((HOST, 0), engine="python", mode="raw").start() as server:
        with pytest.raises(ssl.SSLError, match=r"\[SSL: UNEXPECTED_MESSAGE\] unexpected message"):
            pyecho.EchoClient(
                server.server_address, engine=client_engine, tls=pyecho.client_context(), timeout=5
            )


@pytest.mark.parametrize("engine, client_engine", ENGINE_PAIRS)
def test_pyecho_client_handshake_resumes_after_a_signal(engine: str, client_engine: str) -> None:
    """A signal while the handshake waits runs its Python handler; the
    handshake then goes on (the native client resumes it in C)."""
    import signal

    if not hasattr(signal, "setitimer"):
        pytest.skip(f"signal.setitimer is not available on {sys.platform}")
    fired: list[int] = []
    old = signal.signal(signal.SIGALRM, lambda signum, frame: fired.append(signum))
    try:
        with tls_server(engine, faults=pyecho.Faults(handshake_delay=0.4)).start() as server:
            signal.setitimer(signal.ITIMER_REAL, 0.1)
            with tls_client(server, client_engine, mode="raw") as c:
                assert c.echo(b"after") == b"after"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert fired == [signal.SIGALRM]


# ---- the handshake faults ---------------------------------------------------------


def test_handshake_delay(engine: str) -> None:
    faults = pyecho.Faults(handshake_delay=0.3)
    with tls_server(engine, faults=faults).start() as server:
        start = time.monotonic()
        with tls_connect(server) as s:
            took = time.monotonic() - start
            s.sendall(b"late")
            assert recv_exactly(s, 4) == b"late"
        assert 0.3 <= took < 3, took
        server.set_faults(None)
        start = time.monotonic()
        with tls_connect(server):
            assert time.monotonic() - start < 0.25


@pytest.mark.parametrize("engine, client_engine", ENGINE_PAIRS)
def test_handshake_stall_times_out_the_client(engine: str, client_engine: str) -> None:
    with tls_server(engine, faults=pyecho.Faults(handshake_stall=True)).start() as server:
        with pytest.raises((TimeoutError, socket.timeout)):
            tls_connect(server, timeout=1)
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="did not accept the connection within 1"):
            tls_client(server, client_engine, timeout=1)
        assert 0.9 < time.monotonic() - start < 5
        wait_for(lambda: server.stats.closed["handshake"] == 2, 10, "the clients to leave")


@pytest.mark.parametrize("engine, client_engine", ENGINE_PAIRS)
def test_handshake_reset(engine: str, client_engine: str) -> None:
    with tls_server(engine, faults=pyecho.Faults(handshake_reset=1.0)).start() as server:
        with pytest.raises((ConnectionResetError, ssl.SSLEOFError)):
            tls_connect(server)
        with pytest.raises((ConnectionResetError, ssl.SSLEOFError)):
            tls_client(server, client_engine)
        wait_for(lambda: server.stats.closed["handshake"] == 2, 10, "the resets")


def test_handshake_reset_draws_the_same_in_both_engines() -> None:
    """A chance of 1/2 with a seed: the same connections are reset."""

    def outcomes(engine: str) -> list[bool]:
        faults = pyecho.Faults(handshake_reset=0.5, seed=12345)
        results = []
        with tls_server(engine, faults=faults).start() as server:
            for _ in range(12):
                try:
                    with tls_connect(server) as s:
                        s.sendall(b"?")
                        results.append(recv_exactly(s, 1) == b"?")
                except (ConnectionResetError, ssl.SSLEOFError):
                    results.append(False)
        return results

    native, python = outcomes("native"), outcomes("python")
    assert native == python and True in native and False in native


# ---- safety -----------------------------------------------------------------------


def test_max_clients_counts_tls_connections(engine: str) -> None:
    with tls_server(engine, max_clients=1).start() as server:
        with tls_connect(server) as s:
            s.sendall(b"1")
            assert recv_exactly(s, 1) == b"1"
            with pytest.raises((ConnectionResetError, ssl.SSLError, BrokenPipeError, OSError)):
                with tls_connect(server, timeout=5) as t:
                    t.sendall(b"2")
                    if not t.recv(1):
                        raise ConnectionResetError("closed")
            wait_for(lambda: server.stats.rejected == 1, 10, "the rejection")


def test_idle_timeout_ends_a_handshake_that_never_finishes(engine: str) -> None:
    """A client trickling a ClientHello never counts as active: the
    handshake must end within idle_timeout."""
    with tls_server(engine, idle_timeout=0.3).start() as server:
        with socket.create_connection(server.server_address) as raw:
            start = time.monotonic()
            raw.sendall(b"\x16\x03\x01")  # the start of a record, no more
            time.sleep(0.1)
            raw.sendall(b"\x00")
            raw.settimeout(5)
            assert raw.recv(10) == b""
            assert time.monotonic() - start < 2
        wait_for(lambda: server.stats.closed["idle"] == 1, 10, "the idle close")


def test_native_reports_tls(engine: str) -> None:
    if engine == "native":
        assert pyecho.native_tls_available()
        _, lib = pyecho._native.load()
        assert b"OpenSSL" in pyecho._native.load()[0].string(lib.echo_tls_version())


def test_stats_and_events_of_a_tls_session(engine: str) -> None:
    rec = Recorder()
    with tls_server(engine, mode="line", on_event=rec).start() as server:
        assert server.tls is not None
        with pyecho.EchoClient(
            server.server_address, mode="line", tls=server.tls.client_context()
        ) as c:
            assert c.echo(b"a line\n") == b"a line\n"
            assert c.echo(b"exit\n") == b""
        # The close event, not the counter: the native engine counts a close
        # in C before its event reaches Python.
        wait_for(lambda: len(rec.summary()) == 2, 10, "the close event")
        assert rec.summary() == [("open", 1, LOOPBACK, None), ("close", 1, LOOPBACK, "quit")]
        assert server.stats.closed["quit"] == 1
        assert asdict(server.stats)["bytes_out"] == len(b"a line\n")


# ---- the command line -------------------------------------------------------------


@pytest.mark.slow  # three interpreters, each loading the certificates: seconds
def test_cli_serve_tls_and_client_tls(engine: str, tmp_path: Any) -> None:
    """pyecho serve --tls prints where its throwaway CA is; pyecho client
    --tls --tls-ca FILE trusts it; at exit the CA is gone."""
    import re
    import signal

    serve = [sys.executable, "-m", "pyecho", "serve", "--engine", engine, "--port", "0"]
    with subprocess.Popen(
        [*serve, "--mode", "line", "--tls"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=tmp_path,  # not a source checkout, whose pyecho/ has no library
    ) as proc:
        assert proc.stdout is not None
        try:
            banner = read_line(proc.stdout, 20)
            banner += read_line(proc.stdout, 20)
            port = re.search(rb"serving on 127\.0\.0\.1:(\d+)", banner)
            ca = re.search(rb"openssl s_client -CAfile FILE\): (\S+)", banner)
            assert port and ca, banner
            assert b"throwaway" in banner and b"warning" not in banner  # loopback: no warning
            client = [sys.executable, "-m", "pyecho", "client", "--engine", engine]
            client += ["--port", port[1].decode()]
            run = subprocess.run(
                [*client, "--mode", "line", "--tls", "--tls-ca", ca[1].decode()],
                input=b"over tls\n",
                capture_output=True,
                timeout=30,
                cwd=tmp_path,
            )
            assert run.returncode == 0, run.stderr
            assert b"over tls" in run.stdout
            # Without the CA, the system's CAs do not know the throwaway one.
            run = subprocess.run(
                [*client, "--mode", "line", "--tls"],
                input=b"x\n",
                capture_output=True,
                timeout=30,
                cwd=tmp_path,
            )
            assert run.returncode != 0 and b"certificate verify failed" in run.stderr
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(20)
    assert not os.path.exists(ca[1].decode())


# ---- a build without OpenSSL ------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cmake") is None, reason="needs cmake")
def test_a_build_without_openssl_refuses_tls_saying_why(tmp_path: Any) -> None:
    """-DPYECHO_TLS=OFF (as without OpenSSL's headers): the library builds,
    native_tls_available() is False, the native engine refuses tls= saying
    why, plain TCP still works and the Python engine serves TLS."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    build = tmp_path / "build"
    for step in (
        ["cmake", "-S", root, "-B", str(build), "-DPYECHO_TLS=OFF", "-DPYECHO_WERROR=ON"],
        ["cmake", "--build", str(build), "--target", "pyecho_core", "-j2"],
    ):
        run = subprocess.run(step, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout + run.stderr
    code = """
import pyecho
print("available", pyecho.native_tls_available())
try:
    pyecho.EchoServer(("127.0.0.1", 0), engine="native", tls=True)
except pyecho.NativeUnavailableError as e:
    print("refused", e)
with pyecho.EchoServer(("127.0.0.1", 0), engine="native", mode="raw").start() as s:
    with pyecho.EchoClient(s.server_address, mode="raw") as c:
        print("plain", c.echo(b"ok"))
with pyecho.EchoServer(("127.0.0.1", 0), engine="python", mode="raw", tls=True).start() as s:
    with pyecho.EchoClient(s.server_address, mode="raw", tls=s.tls.client_context()) as c:
        print("python tls", c.echo(b"ok"), c.engine)  # "auto": the Python client
    try:
        pyecho.EchoClient(s.server_address, engine="native", tls=s.tls.client_context())
    except pyecho.NativeUnavailableError as e:
        print("client refused", e)
with pyecho.EchoServer(("127.0.0.1", 0), engine="auto", tls=True) as s:
    print("auto tls", s.engine)
with pyecho.EchoServer(("127.0.0.1", 0), engine="auto") as s:
    print("auto plain", s.engine)
"""
    env = {**os.environ, "PYECHO_LIBRARY": str(build / "libpyecho_core.so")}
    run = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,  # not a source checkout, whose pyecho/ has no library
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0] == "available False"
    assert lines[1].startswith("refused the native engine cannot speak TLS: its library was built")
    assert "without OpenSSL" in lines[1] and "engine='python'" in lines[1]
    assert lines[4].startswith("client refused the native engine cannot speak TLS")
    assert lines[2:4] + lines[5:] == [
        "plain b'ok'",
        "python tls b'ok' python",
        "auto tls python",  # "auto": the Python engine serves TLS
        "auto plain native",
    ]


# ---- every TCP fault over TLS -----------------------------------------------------


def test_set_faults_releases_a_delayed_handshake(engine: str) -> None:
    """handshake_delay changed by set_faults(): a handshake waiting for it
    goes on at once when it is removed."""
    import threading

    with tls_server(engine, faults=pyecho.Faults(handshake_delay=30)).start() as server:
        took: list[float] = []

        def connect() -> None:
            start = time.monotonic()
            with tls_connect(server, timeout=20) as s:
                s.sendall(b"x")
                assert recv_exactly(s, 1) == b"x"
            took.append(time.monotonic() - start)

        t = threading.Thread(target=connect)
        t.start()
        time.sleep(0.3)
        server.set_faults(None)
        t.join(20)
        assert took and 0.25 < took[0] < 5, took


FAULT_CASES = {
    "rate": pyecho.Faults(rate=20_000),
    "slice_delay": pyecho.Faults(slice=100, slice_delay=0.01),
    "stall_after": pyecho.Faults(stall_after=10),
    "close_delay": pyecho.Faults(close_delay=0.2),
    "accept_delay": pyecho.Faults(accept_delay=0.2),
    "reset_after": pyecho.Faults(reset_after=0.3),
    "refuse": pyecho.Faults(refuse=1.0),
}


@pytest.mark.parametrize("name", list(FAULT_CASES))
def test_each_tcp_fault_over_tls(engine: str, name: str) -> None:
    faults = FAULT_CASES[name]
    data = bytes(range(256)) * 8  # 2 KiB
    with tls_server(engine, faults=faults).start() as server:
        start = time.monotonic()
        if name == "refuse":
            with pytest.raises((ConnectionResetError, ssl.SSLError)):
                tls_connect(server)
            wait_for(lambda: server.stats.closed["refused"] == 1, 10, "the refusal")
            return
        with tls_connect(server) as s:
            handshake = time.monotonic() - start
            s.sendall(data)
            if name == "stall_after":
                assert recv_exactly(s, 10) == data[:10]
                s.settimeout(0.3)
                with pytest.raises((TimeoutError, socket.timeout)):
                    s.recv(1)
                return
            if name == "reset_after":
                # Python's ssl reports the reset as a ragged EOF (b"") or an error.
                with contextlib.suppress(ConnectionResetError, ssl.SSLError):
                    while s.recv(4096):
                        pass
                # The engines' timers count whole milliseconds: up to 1 ms early.
                assert time.monotonic() - start >= 0.3 - 0.001
                wait_for(lambda: server.stats.closed["reset_after"] == 1, 10, "the reset")
                return
            assert recv_exactly(s, len(data)) == data
            took = time.monotonic() - start
            if name == "close_delay":
                s.unwrap()  # our close_notify; the server's comes 0.2 s later
                assert time.monotonic() - start - took >= 0.15
        if name == "rate":
            assert took >= 0.05  # 2 KiB at 20 kB/s, records and all
        elif name == "accept_delay":
            assert handshake >= 0.2
        elif name == "slice_delay":
            assert took >= 0.1  # 2 KiB of records in 100-byte pieces, 10 ms apart


@pytest.mark.slow
def test_the_tls_benchmark_runs(tmp_path: Any) -> None:
    """python -m pyecho.bench.tls, briefly: every server answers every row,
    and the report states the targets."""
    out = tmp_path / "tls.json"
    run = subprocess.run(
        [sys.executable, "-m", "pyecho.bench.tls", "--seconds", "0.3", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,  # not a source checkout, whose pyecho/ has no library
    )
    assert run.returncode == 0, run.stderr
    import json

    rows = json.loads(out.read_text())
    servers = {r["server"] for r in rows}
    assert {"native", "python", "asyncio", "floor"} <= servers
    assert all(r["round_trips_per_s"] > 0 for r in rows)
    assert "native CPU per round trip / floor's" in run.stdout
