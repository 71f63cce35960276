"""pytest fixtures for testing network code against an echo server.

Installed with pyecho, loaded by pytest through the ``pytest11`` entry point:

* ``echo_server``: a started :class:`EchoServerFixture` (raw mode, 127.0.0.1,
  a free port); ``@pytest.mark.echo_server(mode="line", ...)`` changes its
  settings (any :class:`pyecho.EchoServer` keyword, plus ``record``,
  ``record_limit`` and ``check_leaks``).
* ``udp_echo_server``: the same over UDP (``@pytest.mark.udp_echo_server``).
* ``echo_server_factory``: makes as many servers as a test wants.
* ``echo_engine``: the engine they run on (``--echo-engine``, ini
  ``echo_engine``; ``auto``, the default, is the native engine where its
  library loads, else the Python engine; ``both`` runs each test once per
  engine).

``tls=True`` (or ``tls=pyecho.TLS(...)``) serves TLS: ``echo_server.tls``
has ``client_context()``, ``ca_file`` and ``ca_pem``. The recording relay
would see only encrypted records, so a TLS server is bare (``record=False``)
and ``record=True`` with it is refused.

Every server is closed when its test ends, pass or fail. A server whose
``on_event`` raised, or that still has connections open when the test asked
for ``check_leaks=True``, fails the test.
"""

from __future__ import annotations

import dataclasses
import inspect
import select
import socket
import threading
import time
import traceback
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

import pytest

from . import _auto, _config
from ._config import (
    CLOSE_REASONS,
    DEFAULT_ENGINE,
    DEFAULT_HOST,
    DROP_REASONS,
    ENGINES,
    Event,
    hostport,
)
from ._tap import Tap, Transcript, family_of, host_port, reachable, socket_address
from .api import EchoServer

if TYPE_CHECKING:
    from pluggy import Result

__all__ = ["EchoServerFactory", "EchoServerFixture", "Transcript"]

RECORD_LIMIT = 1 << 20  # bytes kept per connection by default
LEAK_GRACE = 2.0  # seconds check_leaks gives closes still on their way
ENGINE_CHOICES = (*_config.ENGINE_CHOICES, "both")


class EchoServerFixture(EchoServer):
    """An :class:`pyecho.EchoServer` that remembers what it saw.

    ``server_address`` is where clients connect. Over TCP, with ``record``
    (the default) that is a small relay in front of the server that keeps
    the first ``record_limit`` bytes each client sends (``received``); it
    passes every byte, half-close and reset on as they come, and events name
    the client's own address. ``record=False`` connects clients straight to
    the engine (``engine_address``) when a test must see it bare. The relay
    is TCP only: a UDP server (``transport="udp"``) is always bare, and its
    events are drops (``kind="drop"``). So is a TLS server (``tls=``): the
    relay would record encrypted records, never the plaintext, so
    ``record=True`` with TLS is refused.
    """

    def __init__(
        self,
        server_address: tuple[str, int] = (DEFAULT_HOST, 0),
        *,
        record: bool | None = None,
        record_limit: int = RECORD_LIMIT,
        check_leaks: bool = False,
        on_event: Callable[[Event], None] | None = None,
        **settings: Any,
    ) -> None:
        if isinstance(record_limit, bool) or not isinstance(record_limit, int) or record_limit < 0:
            raise ValueError(f"record_limit must be an int >= 0, got {record_limit!r}")
        if on_event is not None and not callable(on_event):
            raise TypeError("on_event must be callable or None")
        if settings.get("transport", "tcp") == "udp":
            if record:
                raise ValueError("record=True needs TCP: the recording relay does not carry UDP")
            if check_leaks:
                raise ValueError("check_leaks=True needs TCP: UDP has no connections to leak")
            record = False
        else:
            settings.setdefault("mode", "raw")
        if settings.get("tls") not in (None, False):
            if record:
                raise ValueError(
                    "record=True with tls: the recording relay would see only encrypted TLS "
                    "records, never what the client sent, so received is not available over "
                    "TLS; leave record out (a TLS server is bare)"
                )
            record = False
        self.check_leaks = bool(check_leaks)
        # (what failed, its exception): on_event raising, the relay failing
        self._failures: list[tuple[str, BaseException]] = []
        self._reported = 0  # failures already reported to the test
        self._events: list[Event] = []
        self._changed = threading.Condition()
        self._tap: Tap | None = None
        self._callback = on_event
        self._serving = False
        # The plugin's own connections (see _settle), by client address: True
        # once the server opened them. They have no events.
        self._probes: dict[tuple[str, int], bool] = {}
        super().__init__(server_address, on_event=self._observe, **settings)
        self.engine_address: tuple[str, int] = self.server_address
        if record is None or record:
            try:
                self._tap = Tap(self.engine_address, record_limit, self._relay_failed)
            except BaseException:
                super().close()
                raise
            self.server_address = self._tap.address

    def _observe(self, event: Event) -> None:
        """on_event: record, then call the user's. If that raises, keep the
        error for the test's report and stop serving, as EchoServer does."""
        if self._tap is not None:
            client = self._tap.client_of(event.peer, event.conn_id)
            if client is not None:
                event = dataclasses.replace(event, peer=client)
        with self._changed:
            if event.peer in self._probes:
                self._probes[event.peer] = True
                if self._tap is not None:
                    self._tap.hide(event.conn_id)
                self._changed.notify_all()
                return
            self._events.append(event)
            self._changed.notify_all()
        if self._callback is None:
            return
        try:
            self._callback(event)
        except Exception as e:  # noqa: BLE001 - reported by the plugin when the test ends
            self._fail("on_event raised", e, "stopped serving", once=True)
            self.shutdown()

    def _relay_failed(self, error: BaseException) -> None:
        self._fail("the recording relay failed with", error, "stopped relaying")

    def _fail(self, what: str, error: BaseException, outcome: str, once: bool = False) -> None:
        """Keep a failure for the test's report; ``once``: unless the same
        one (same text) is kept already, as when on_event raises the same
        error for every event (the open, then the close at shutdown)."""
        text = f"{what} {type(error).__name__}: {error}; {outcome}"
        with self._changed:
            if once and any(text == kept for kept, _ in self._failures):
                return
            self._failures.append((text, error))
            self._changed.notify_all()

    @property
    def errors(self) -> list[BaseException]:
        """What went wrong in the background: exceptions raised by on_event
        (the server then stops serving) or by the recording relay."""
        with self._changed:
            return [e for _, e in self._failures]

    def start(self) -> EchoServerFixture:
        super().start()
        self._serving = True
        return self

    def shutdown(self) -> None:
        self._serving = False
        super().shutdown()

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self._tap is not None:
                self._tap.close()

    # ---- what the server saw ----

    @property
    def events(self) -> list[Event]:
        """Every event so far, in order (a copy): opens and closes over TCP,
        drops over UDP."""
        with self._changed:
            return list(self._events)

    @property
    def open_connections(self) -> list[Event]:
        """The open events of connections not closed yet."""
        with self._changed:
            closed = {e.conn_id for e in self._events if e.kind == "close"}
            return [e for e in self._events if e.kind == "open" and e.conn_id not in closed]

    @property
    def received(self) -> dict[int, Transcript]:
        """conn_id -> the bytes that client sent (at most ``record_limit``;
        each value is bytes with ``total`` and ``truncated``)."""
        if self._tap is None:
            if self.transport == "udp":
                raise RuntimeError(
                    "received is for TCP: a UDP server has no recording relay (every "
                    "datagram comes back whole; stats counts them, events are drops)"
                )
            raise RuntimeError("received needs record=True: this server was made with record=False")
        return self._tap.transcripts()

    def _wait(self, done: Callable[[], bool], timeout: float, what: Callable[[], str]) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not done():
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{what()} (after {timeout:g} s; {self!r})")
                # Events wake us at once; transcripts are polled.
                self._changed.wait(min(left, 0.01))

    def wait_for_events(
        self,
        kind: str | None = None,
        *,
        reason: str | None = None,
        count: int = 1,
        timeout: float = 5.0,
    ) -> list[Event]:
        """Wait until ``count`` events of ``kind`` ("open", "close", "drop",
        None for any) and ``reason`` (a close's, or a drop's) have happened;
        return all that match. AssertionError after ``timeout`` seconds."""
        if kind not in ("open", "close", "drop", None):
            raise ValueError(f"kind must be 'open', 'close', 'drop' or None, got {kind!r}")
        reasons: tuple[str, ...] = DROP_REASONS if kind == "drop" else CLOSE_REASONS
        if kind is None:
            reasons = (*CLOSE_REASONS, *DROP_REASONS)
        if reason is not None and reason not in reasons:
            raise ValueError(f"reason must be one of {', '.join(reasons)}, got {reason!r}")

        def matching() -> list[Event]:
            return [
                e for e in self._events if kind in (None, e.kind) and reason in (None, e.reason)
            ]

        what = f"{kind or 'any'} events" + (f" with reason {reason!r}" if reason else "")
        self._wait(
            lambda: len(matching()) >= count,
            timeout,
            lambda: f"{len(matching())} {what}, not {count}; events: {self._events}",
        )
        with self._changed:
            return matching()

    def wait_for_received(
        self, data: bytes, *, conn_id: int | None = None, timeout: float = 5.0
    ) -> int:
        """Wait until a connection (``conn_id``, or any) has received
        ``data`` somewhere in its transcript; return its conn_id."""
        found: list[int] = []

        def done() -> bool:
            found[:] = [
                i for i, t in self.received.items() if conn_id in (None, i) and t.find(data) >= 0
            ]
            return bool(found)

        self._wait(done, timeout, lambda: f"no connection received {data!r}: {self.received}")
        return found[0]

    def _settle(self, timeout: float) -> None:
        """Wait until the server has opened every connection made before this
        call, even those still in a listen backlog: it then has opened (or
        rejected) a probe connection made after them, as accept queues are
        first in, first out. The probe has no events and counts in stats."""
        host, port = reachable(self.server_address)
        with socket.socket(family_of(host), socket.SOCK_STREAM) as probe:
            probe.bind(socket_address(host, 0))
            me = host_port(probe.getsockname())
            with self._changed:
                self._probes[me] = False
            probe.settimeout(timeout)
            try:
                probe.connect(socket_address(host, port))
            except OSError:  # closed meanwhile: nothing more will be accepted
                return

            def settled() -> bool:
                # Opened, or closed at once: rejected (max_clients).
                return self._probes[me] or bool(select.select([probe], [], [], 0)[0])

            self._wait(settled, timeout, lambda: "the server did not accept a new connection")

    def assert_connections_closed(self, timeout: float = LEAK_GRACE) -> None:
        """Wait up to ``timeout`` seconds for every connection made so far to
        close; AssertionError naming those still open."""
        if self._serving:
            self._settle(timeout)

        def still_open() -> str:
            conns = self.open_connections
            return ", ".join(f"#{e.conn_id} from {hostport(*e.peer)}" for e in conns)

        self._wait(
            lambda: not self.open_connections,
            timeout,
            lambda: f"connections still open: {still_open()}",
        )

    def check(self) -> None:
        """Raise AssertionError saying what went wrong (``errors``, and
        connections left open if ``check_leaks``) not told before; the plugin
        calls it when the test ends."""
        problems = self._problems(leaks=True)
        if problems:
            raise AssertionError("\n\n".join(problems))

    def _problems(self, *, leaks: bool) -> list[str]:
        """What is wrong with this server, not reported yet."""
        with self._changed:
            new, self._reported = self._failures[self._reported :], len(self._failures)
        problems = [
            f"{what} ({self!r})\n"
            + "".join(traceback.format_exception(type(e), e, e.__traceback__)).rstrip()
            for what, e in new
        ]
        if leaks and self.check_leaks:
            try:
                self.assert_connections_closed()
            except AssertionError as e:
                problems.append(f"check_leaks: {e}")
        return problems

    def __repr__(self) -> str:
        try:
            what = self.mode if self.transport == "tcp" else "udp"
            where = hostport(*self.server_address)
        except AttributeError:  # its __init__ failed (a bad argument): in a traceback
            return "<EchoServerFixture (not made)>"
        return f"<EchoServerFixture {self.engine} {what} on {where}>"


class EchoServerFactory(Protocol):
    """The type of the ``echo_server_factory`` fixture."""

    def __call__(
        self, server_address: tuple[str, int] = ..., **settings: Any
    ) -> EchoServerFixture: ...


# ---- the engine option ----


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("pyecho", "pyecho echo server fixtures")
    group.addoption(
        "--echo-engine",
        dest="echo_engine",
        choices=ENGINE_CHOICES,
        default=None,
        help="engine of the echo_server fixtures: auto (default: native where its library "
        "loads, else python), native, python, or both (each test that uses them runs once "
        "per engine)",
    )
    parser.addini("echo_engine", "default for --echo-engine", default=DEFAULT_ENGINE)


def _engines(config: pytest.Config) -> list[str]:
    value = config.getoption("echo_engine") or str(config.getini("echo_engine")).strip()
    if value not in ENGINE_CHOICES:
        raise pytest.UsageError(
            f"echo_engine must be one of {', '.join(ENGINE_CHOICES)}; got {value!r}"
        )
    if value == "both":
        return list(ENGINES)
    if value != "auto":
        return [value]
    try:
        return [_auto.choose(value)[0]]  # "auto": the engine that runs
    except ValueError as e:  # PYECHO_ENGINE names no engine
        raise pytest.UsageError(str(e)) from None


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "echo_server(**settings): settings of the echo_server fixture: any "
        "pyecho.EchoServer keyword, record=, record_limit=, check_leaks=",
    )
    config.addinivalue_line(
        "markers",
        "udp_echo_server(**settings): settings of the udp_echo_server fixture: any "
        "pyecho.EchoServer keyword that applies to UDP (faults=, udp_rate=, ...)",
    )
    _engines(config)  # a bad ini value is a usage error at once


def pytest_report_header(config: pytest.Config) -> str:
    return f"pyecho fixtures: echo engine {' and '.join(_engines(config))}"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """With --echo-engine=both, run each test that uses the fixtures once
    per engine, unless it chose its engine itself."""
    engines = _engines(metafunc.config)
    if len(engines) < 2 or "echo_engine" not in metafunc.fixturenames:
        return
    for mark in metafunc.definition.iter_markers("parametrize"):
        names = mark.args[0] if mark.args else mark.kwargs.get("argnames", ())
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")]
        if "echo_engine" in names:
            return
    # Each server fixture used has its engine from its marker: nothing to vary.
    used = [name for name in _MARKERS if name in metafunc.fixturenames]
    fixed = [
        name
        for name in used
        if "engine" in getattr(metafunc.definition.get_closest_marker(name), "kwargs", {})
    ]
    asks = _arguments(metafunc.function)
    if used and fixed == used and "echo_server_factory" not in asks:
        return
    metafunc.parametrize("echo_engine", engines, indirect=True, ids=engines)


# ---- fixtures ----

_SERVERS = pytest.StashKey[list[EchoServerFixture]]()
_MARKERS = ("echo_server", "udp_echo_server")  # each names its fixture


@pytest.fixture
def echo_engine(request: pytest.FixtureRequest) -> str:
    """The engine ("native" or "python") of this test's echo servers:
    --echo-engine or the ini setting echo_engine; with "both", the test runs
    once per engine. A test whose server fixtures all take their engine from
    their markers (``@pytest.mark.echo_server(engine="python")``) and that
    makes no other server runs on that engine: echo_engine says so."""
    param = getattr(request, "param", None)
    if param is not None:
        return str(param)
    return _marker_engine(request) or _engines(request.config)[0]


def _marker_engine(request: pytest.FixtureRequest) -> str | None:
    """The engine every server fixture this test uses takes from its marker,
    if they agree and the test has no echo_server_factory of its own (whose
    servers run on echo_engine); else None. The same rule as
    pytest_generate_tests, which then leaves the engine alone."""
    used = [name for name in _MARKERS if name in request.fixturenames]
    function = getattr(request, "function", None)
    if not used or function is None or "echo_server_factory" in _arguments(function):
        return None
    engines = set()
    for name in used:
        marker = request.node.get_closest_marker(name)
        engines.add(None if marker is None else marker.kwargs.get("engine"))
    engine = engines.pop() if len(engines) == 1 else None
    return engine if engine in ENGINES else None


def _arguments(function: Callable[..., Any]) -> Any:
    try:
        return inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read: assume the worst
        return ("echo_server_factory",)


@pytest.fixture
def echo_server_factory(
    request: pytest.FixtureRequest, echo_engine: str
) -> Iterator[EchoServerFactory]:
    """Make started echo servers: ``echo_server_factory(mode="line", ...)``
    takes an address (default 127.0.0.1, a free port) and any
    pyecho.EchoServer keyword, plus record=, record_limit=, check_leaks=;
    defaults: raw mode, the echo_engine. Returns an EchoServerFixture. All
    are closed when the test ends."""
    servers = request.node.stash.setdefault(_SERVERS, [])

    def make(
        server_address: tuple[str, int] = (DEFAULT_HOST, 0), **settings: Any
    ) -> EchoServerFixture:
        settings.setdefault("engine", echo_engine)
        server = EchoServerFixture(server_address, **settings)
        servers.append(server)
        return server.start()

    yield make
    problems = []
    for server in reversed(servers):
        try:
            server.close()
        except Exception as e:  # noqa: BLE001 - every server is closed; all failures told
            problems.append(f"{server!r}: close() raised {e!r}")
        problems += server._problems(leaks=False)  # on_event errors during close
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


@pytest.fixture
def echo_server(
    request: pytest.FixtureRequest, echo_server_factory: EchoServerFactory
) -> EchoServerFixture:
    """A started echo server (EchoServerFixture): TCP, raw mode, 127.0.0.1,
    a free port bound before the test starts. Connect to
    ``echo_server.server_address``; ``events``, ``received`` and ``stats``
    say what it saw. ``@pytest.mark.echo_server(mode="line", ...)`` changes
    its settings (any pyecho.EchoServer keyword, plus record=,
    record_limit=, check_leaks=). Closed when the test ends, pass or fail."""
    return _marked_server(request, echo_server_factory, "echo_server")


@pytest.fixture
def udp_echo_server(
    request: pytest.FixtureRequest, echo_server_factory: EchoServerFactory
) -> EchoServerFixture:
    """A started UDP echo server (EchoServerFixture, transport="udp"):
    127.0.0.1, a free port bound before the test starts; every datagram sent
    to ``udp_echo_server.server_address`` comes back whole. No relay (it is
    TCP only): ``events`` are drops, ``stats`` counts datagrams.
    ``@pytest.mark.udp_echo_server(faults=pyecho.Faults(drop=0.1), ...)``
    changes its settings (any pyecho.EchoServer keyword that applies to
    UDP). Closed when the test ends, pass or fail."""
    return _marked_server(request, echo_server_factory, "udp_echo_server", transport="udp")


def _marked_server(
    request: pytest.FixtureRequest, factory: EchoServerFactory, name: str, **fixed: Any
) -> EchoServerFixture:
    """The server of fixture ``name``, made with its marker's settings; a bad
    setting is the test's error in one line naming the marker (the plugin's
    own frames say nothing to a user)."""
    try:
        return factory(**fixed, **_marker_settings(request, name))
    except (TypeError, ValueError) as e:
        error = f"@pytest.mark.{name}: {type(e).__name__}: {e}"
    pytest.fail(error, pytrace=False)  # outside the except: no "During handling of..."


def _marker_settings(request: pytest.FixtureRequest, name: str) -> dict[str, Any]:
    """The keywords of every ``@pytest.mark.<name>`` on the test, its class
    and module; the nearest wins."""
    settings: dict[str, Any] = {}
    for mark in reversed(list(request.node.iter_markers(name))):
        if mark.args:
            raise TypeError(f"keyword arguments only (mode='line', ...), not {mark.args!r}")
        settings.update(mark.kwargs)
    return settings


# ---- failing the test for a broken server ----


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Result[None], None]:
    outcome = yield
    servers = item.stash.get(_SERVERS, [])
    if not servers:
        return
    if outcome.excinfo is not None:  # failed already: add what the servers saw
        problems = [p for s in servers for p in s._problems(leaks=False)]
        if problems:
            item.add_report_section("call", "echo_server", "\n\n".join(problems))
        return
    problems = [p for s in servers for p in s._problems(leaks=True)]
    if problems:
        try:
            pytest.fail("\n\n".join(problems), pytrace=False)
        except pytest.fail.Exception as e:
            if not hasattr(outcome, "force_exception"):  # pluggy < 1.1
                raise
            outcome.force_exception(e)
