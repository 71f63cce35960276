"""Bad arguments to every public call raise a clear TypeError or ValueError
in Python, the same in both engines, before anything reaches the C core."""

from __future__ import annotations

import errno
import math
from typing import Any

import pytest

import pyecho
from conftest import LOOPBACK, NATIVE_MISSING
from pyecho import _native
from pyecho._config import SETTINGS, TIMEOUT, Setting, check_timeout, make_config
from pyecho._faults import FAULTS

ADDR = (LOOPBACK, 0)

# (keyword arguments, exception, message fragment) for EchoServer.
BAD_SERVER_ARGS: list[tuple[dict[str, Any], type[Exception], str]] = [
    ({"server_address": (LOOPBACK, -1)}, ValueError, "port must be between"),
    ({"server_address": (LOOPBACK, 65536)}, ValueError, "port must be between"),
    ({"server_address": (LOOPBACK, 2**64)}, ValueError, "port must be between"),
    ({"server_address": (LOOPBACK, "80")}, TypeError, "port must be an int"),
    ({"server_address": (LOOPBACK, 80.0)}, TypeError, "port must be an int"),
    ({"server_address": (LOOPBACK, True)}, TypeError, "port must be an int"),
    ({"server_address": (LOOPBACK, None)}, TypeError, "port must be an int"),
    ({"server_address": [LOOPBACK, 0]}, TypeError, "address must be a (host, port) tuple"),
    ({"server_address": (LOOPBACK,)}, TypeError, "address must be a (host, port) tuple"),
    ({"server_address": "127.0.0.1:0"}, TypeError, "address must be a (host, port) tuple"),
    ({"server_address": (b"127.0.0.1", 0)}, TypeError, "host must be a str"),
    ({"server_address": (None, 0)}, TypeError, "host must be a str"),
    ({"server_address": ("127.0.0.1\0evil", 0)}, ValueError, "NUL"),
    ({"server_address": ("::1\0", 0)}, ValueError, "NUL"),
    # IPv6 hosts written as a URL would, or with a scope that cannot be one.
    ({"server_address": ("[::1]", 0)}, ValueError, "give the address without them ('::1')"),
    ({"server_address": ("fe80::1", 0)}, ValueError, "link-local address: name the interface"),
    ({"server_address": ("fe80::1%", 0)}, ValueError, "must be a network interface's name"),
    ({"server_address": ("fe80::1%0", 0)}, ValueError, "must be a network interface's name"),
    ({"server_address": ("fe80::1%4294967296", 0)}, ValueError, "interface's name or index"),
    ({"server_address": ("fe80::1%a b", 0)}, ValueError, "must be a network interface's name"),
    ({"server_address": ("fe80::1%a/b", 0)}, ValueError, "must be a network interface's name"),
    ({"server_address": ("fe80::1%%lo", 0)}, ValueError, "must be a network interface's name"),
    ({"server_address": ("fe80::1%" + "x" * 16, 0)}, ValueError, "interface's name"),
    ({"server_address": ("fe80::1%lo\n", 0)}, ValueError, "must be a network interface's name"),
    ({"server_address": ("fe80::1%é", 0)}, ValueError, "must be a network interface's name"),
    ({"server_address": ("127.0.0.1%lo", 0)}, ValueError, "follows only an IPv6 address"),
    ({"server_address": ("localhost%lo", 0)}, ValueError, "follows only an IPv6 address"),
    # Longer than DNS allows, in all or in one label (the IDNA codec's error).
    ({"server_address": ("a" * 254, 0)}, ValueError, "too long: 254 characters, at most 253"),
    ({"server_address": ("a" * 100_000, 0)}, ValueError, "(100000 characters) is too long"),
    ({"server_address": ("a" * 64 + ".test", 0)}, ValueError, "is not a valid host name"),
    ({"engine": "c"}, ValueError, "engine must be one of auto, native, python"),
    ({"engine": None}, ValueError, "engine must be one of"),
    ({"engine": ["native"]}, ValueError, "engine must be one of"),
    ({"mode": "echo"}, ValueError, "mode must be one of raw, line, seed"),
    ({"mode": 0}, ValueError, "mode must be one of"),
    ({"mode": None}, ValueError, "mode must be one of"),
    ({"quit_word": 42}, TypeError, "quit_word must be bytes, str or None"),
    ({"quit_word": b""}, ValueError, "quit_word must be 1 to 255 bytes"),
    ({"quit_word": ""}, ValueError, "quit_word must be 1 to 255 bytes"),
    ({"quit_word": b"x" * 256}, ValueError, "quit_word must be 1 to 255 bytes"),
    ({"quit_word": "é" * 128}, ValueError, "quit_word must be 1 to 255 bytes"),
    ({"bufsize": 0}, ValueError, "bufsize must be between 1 and 1048576"),
    ({"bufsize": -1}, ValueError, "bufsize must be between"),
    ({"bufsize": (1 << 20) + 1}, ValueError, "bufsize must be between"),
    ({"bufsize": 2**70}, ValueError, "bufsize must be between"),
    ({"bufsize": 99.0}, TypeError, "bufsize must be an int"),
    ({"bufsize": "99"}, TypeError, "bufsize must be an int"),
    ({"max_line": 0}, ValueError, "max_line must be between 1 and 16777216"),
    ({"max_line": -5}, ValueError, "max_line must be between"),
    ({"max_line": (1 << 24) + 1}, ValueError, "max_line must be between"),
    ({"max_line": None}, TypeError, "max_line must be an int"),
    ({"max_pending": 0}, ValueError, "max_pending must be between 1 and 1073741824"),
    ({"max_pending": -1}, ValueError, "max_pending must be between"),
    ({"max_pending": (1 << 30) + 1}, ValueError, "max_pending must be between"),
    ({"max_pending": 1.5}, TypeError, "max_pending must be an int"),
    ({"max_clients": -1}, ValueError, "max_clients must be between 0 and"),
    ({"max_clients": 2**32}, ValueError, "max_clients must be between"),
    ({"max_clients": "10"}, TypeError, "max_clients must be an int"),
    ({"idle_timeout": -1}, ValueError, "idle_timeout must be between 0 and"),
    ({"idle_timeout": math.nan}, ValueError, "idle_timeout must be between"),
    ({"idle_timeout": math.inf}, ValueError, "idle_timeout must be between"),
    ({"idle_timeout": 1e12}, ValueError, "idle_timeout must be between"),
    ({"idle_timeout": 0.0001}, ValueError, "idle_timeout must be at least 0.001"),
    ({"idle_timeout": "5"}, TypeError, "idle_timeout must be a number"),
    # beyond any float (issue 15): the range, not an OverflowError naming nothing
    ({"idle_timeout": 10**400}, ValueError, "idle_timeout must be between 0 and 4e+06 seconds"),
    ({"idle_timeout": -(10**400)}, ValueError, "idle_timeout must be between"),
    (
        {"max_pending": 10**400},
        ValueError,
        "max_pending must be between 1 and 1073741824, got about",
    ),
    ({"mode": 10**400}, ValueError, "mode must be one of raw, line, seed; got about 1e+400"),
    ({"idle_timeout": True}, TypeError, "idle_timeout must be a number"),
    ({"backlog": 0}, ValueError, "backlog must be between 1 and 65535"),
    ({"backlog": 65536}, ValueError, "backlog must be between"),
    ({"backlog": -1}, ValueError, "backlog must be between"),
    ({"backlog": "128"}, TypeError, "backlog must be an int"),
    ({"on_event": 3}, TypeError, "on_event must be callable"),
]


# Every setting (server, client, faults) that takes a number: the kinds of numbers
# Python does not turn into a float (or a str) without an error of its own.
NUMERIC = [
    (where, s)
    for where, table in (("config", SETTINGS), ("faults", FAULTS), ("client", (TIMEOUT,)))
    for s in table
    if s.kind in ("count", "bytes", "rate", "seconds", "probability")
]
HUGE = {"1e+400": 10**400, "-1e+400": -(10**400), "1e+5000": 10**5000, "1e+309": 10**309}


@pytest.mark.parametrize("shown, huge", HUGE.items(), ids=HUGE)
@pytest.mark.parametrize("where, setting", NUMERIC, ids=[s.name for _, s in NUMERIC])
def test_huge_numbers_are_out_of_range_naming_the_setting(
    where: str, setting: Setting, shown: str, huge: int
) -> None:
    """A ValueError naming the setting and its range, shortly: not an
    OverflowError (math.isfinite(10**400)) nor 5000 digits."""
    with pytest.raises(ValueError) as info:
        if where == "config":
            make_config(**{setting.name: huge})
        elif where == "faults":
            pyecho.Faults(**{setting.name: huge})
        else:
            check_timeout(huge)
    message = str(info.value)
    assert message.startswith(f"{setting.name} must be ")
    assert message.endswith(f"got about {shown}")
    assert len(message) < 120


@pytest.fixture
def no_c_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record every call into the C library's server and client constructors:
    a rejected argument must not get that far."""
    calls: list[str] = []
    if NATIVE_MISSING:  # a pure-Python install: no C call can be made
        return calls
    ffi, lib = _native.load()

    class Spy:
        def __getattr__(self, name: str) -> Any:
            if name in ("echo_server_new", "echo_client_new"):
                calls.append(name)
            return getattr(lib, name)

    monkeypatch.setattr(_native, "_loaded", (ffi, Spy()))
    return calls


@pytest.mark.parametrize(
    "kwargs, exc, message", BAD_SERVER_ARGS, ids=[repr(a[0])[:60] for a in BAD_SERVER_ARGS]
)
def test_bad_server_arguments(
    engine: str, kwargs: dict, exc: type, message: str, no_c_calls: list
) -> None:
    kwargs = {"server_address": ADDR, "engine": engine, **kwargs}
    address = kwargs.pop("server_address")
    with pytest.raises(exc, match=None) as info:
        pyecho.EchoServer(address, **kwargs)
    assert message in str(info.value)
    assert no_c_calls == []


CLIENT_KEYS = ("engine", "mode", "quit_word", "bufsize", "max_line")
BAD_CLIENT_ARGS = [a for a in BAD_SERVER_ARGS if set(a[0]) <= {"server_address", *CLIENT_KEYS}]
BAD_CLIENT_ARGS += [
    ({"server_address": (LOOPBACK, 0)}, ValueError, "port must be between 1 and 65535"),
    ({"timeout": 0}, ValueError, "timeout must be a positive number"),
    ({"timeout": -1}, ValueError, "timeout must be a positive number"),
    ({"timeout": math.nan}, ValueError, "timeout must be a positive number"),
    ({"timeout": math.inf}, ValueError, "timeout must be a positive number"),
    ({"timeout": 3e6}, ValueError, "timeout must be a positive number of seconds up to"),
    ({"timeout": "1"}, TypeError, "timeout must be a number or None"),
    ({"timeout": 10**309}, ValueError, "timeout must be a positive number of seconds up to"),
]


@pytest.mark.parametrize(
    "kwargs, exc, message", BAD_CLIENT_ARGS, ids=[repr(a[0])[:60] for a in BAD_CLIENT_ARGS]
)
def test_bad_client_arguments(
    engine: str, kwargs: dict, exc: type, message: str, no_c_calls: list
) -> None:
    kwargs = {"server_address": (LOOPBACK, 9), "engine": engine, **kwargs}
    address = kwargs.pop("server_address")
    with pytest.raises(exc) as info:
        pyecho.EchoClient(address, **kwargs)
    assert message in str(info.value)
    assert no_c_calls == []


def test_the_spy_sees_c_calls(engine: str, no_c_calls: list) -> None:
    """The no_c_calls fixture does see a call that reaches the C core."""
    with pyecho.EchoServer(ADDR, engine=engine):
        pass
    assert no_c_calls == (["echo_server_new"] if engine == "native" else [])


def test_bad_arguments_to_methods(engine: str) -> None:
    with pyecho.EchoServer(ADDR, engine=engine) as server:
        for bad, exc in [
            (0, ValueError),
            (-1, ValueError),
            (math.nan, ValueError),
            ("1", TypeError),
        ]:
            with pytest.raises(exc, match="timeout"):
                server.serve_forever(poll_interval=bad)
        server.start()
        with pytest.raises(RuntimeError, match="already serving"):
            server.start()
        with pyecho.EchoClient(server.server_address, engine=engine, timeout=10) as client:
            for data in ("text", None, 42, [1, 2]):
                with pytest.raises(TypeError, match="data must be bytes-like"):
                    client.echo(data)  # type: ignore[arg-type]
                with pytest.raises(TypeError, match="data must be bytes-like"):
                    client.send(data)  # type: ignore[arg-type]
            for size, exc in [
                (0, ValueError),
                (-1, ValueError),
                (2**31, ValueError),
                (1.0, TypeError),
                ("8", TypeError),
            ]:
                with pytest.raises(exc, match="bufsize"):
                    client.recv(size)
            for timeout, exc in [
                (-1, ValueError),
                (0, ValueError),
                (math.inf, ValueError),
                ("1", TypeError),
            ]:
                with pytest.raises(exc, match="timeout"):
                    client.timeout = timeout
            # Bytes-like inputs are fine, and the client still works.
            assert client.echo(bytearray(b"ok")) == b"ok"
            assert client.echo(memoryview(b"ok2")) == b"ok2"
        client.close()  # twice is fine
        for call in (
            lambda: client.echo(b"x"),
            lambda: client.send(b"x"),
            client.recv,
            client.shutdown_write,
            client.fileno,
        ):
            with pytest.raises(ValueError, match="closed client"):
                call()
    server.close()  # twice is fine
    with pytest.raises(ValueError, match="closed server"):
        server.start()
    with pytest.raises(ValueError, match="closed server"):
        server.serve_forever()
    with pytest.raises(ValueError, match="closed server"):
        _ = server.stats


def test_os_errors_are_the_same_in_both_engines(engine: str) -> None:
    """Failures the OS reports surface as the same OSError subclasses."""
    with pyecho.EchoServer(ADDR, engine=engine) as server:
        with pytest.raises(OSError) as info:
            pyecho.EchoServer(server.server_address, engine=engine)
        assert info.value.errno == errno.EADDRINUSE
    port = server.server_address[1]  # closed now: nothing listens there
    with pytest.raises(ConnectionRefusedError):
        pyecho.EchoClient((LOOPBACK, port), engine=engine, timeout=5)
