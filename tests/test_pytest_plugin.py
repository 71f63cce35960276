"""The pytest plugin (pyecho/pytest_plugin.py): its fixtures, marker, engine
option and failure reports, run in inner pytest sessions (pytester), and the
recording relay in front of the server (pyecho/_tap.py) on both engines."""

from __future__ import annotations

import errno
import importlib.metadata
import os
import re
import select
import site
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import pyecho
from conftest import LOOPBACK, open_fds, wait_for
from pyecho._tap import ACCEPT_PAUSE
from pyecho.pytest_plugin import EchoServerFixture

pytest_plugins = ["pytester"]

# What --echo-engine=auto (the default) runs here: the native engine where it
# loads, unless PYECHO_ENGINE=python says otherwise.
DEFAULT_RUNS = (
    "native"
    if pyecho.native_available() and os.environ.get("PYECHO_ENGINE", "") != "python"
    else "python"
)


def run(pytester: pytest.Pytester, source: str, *args: str) -> pytest.RunResult:
    """Run one inner test file in this process (the plugin comes from its
    entry point, as for a user)."""
    pytester.makepyfile(test_inner=textwrap.dedent(source))
    return pytester.runpytest("-p", "no:cacheprovider", *args)


def pyecho_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("pyecho-")]


ROUNDTRIP = """
    import socket

    def test_roundtrip(echo_server, echo_engine):
        host, port = echo_server.server_address
        assert host == "127.0.0.1" and port > 0
        assert echo_server.engine == echo_engine and echo_server.mode == "raw"
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
            me = s.getsockname()
        (closed,) = echo_server.wait_for_events("close")
        assert closed.reason == "peer" and closed.peer == me
        assert echo_server.received == {closed.conn_id: b"ping"}
        assert echo_server.stats.bytes_in == 4
        open("engine-" + echo_engine, "w").close()
"""


# ---- installation ----


def test_registered_through_the_pytest11_entry_point() -> None:
    (ep,) = [e for e in importlib.metadata.entry_points(group="pytest11") if e.name == "pyecho"]
    assert ep.value == "pyecho.pytest_plugin"


def test_py_typed_is_in_the_package() -> None:
    assert (Path(pyecho.__file__).parent / "py.typed").is_file()


def test_fixtures_are_listed_with_their_docstrings(pytester: pytest.Pytester) -> None:
    result = pytester.runpytest("--fixtures", "-p", "no:cacheprovider")
    assert result.ret == 0
    out = result.stdout.str()
    for name, doc in [
        ("echo_server", "A started echo server (EchoServerFixture)"),
        ("udp_echo_server", "A started UDP echo server (EchoServerFixture"),
        ("echo_server_factory", "Make started echo servers"),
        ("echo_engine", 'The engine ("native" or "python")'),
    ]:
        result.stdout.fnmatch_lines([f"{name} -- *pytest_plugin.py:*", f"    {doc}*"])
    assert "no docstring available" not in out.split("pytest_plugin")[-1]


def test_marker_and_option_are_documented(pytester: pytest.Pytester) -> None:
    pytester.runpytest("--markers").stdout.fnmatch_lines(
        [
            "@pytest.mark.echo_server(**settings):*",
            "@pytest.mark.udp_echo_server(**settings):*",
        ]
    )
    pytester.runpytest("--help").stdout.fnmatch_lines(["*--echo-engine=*"])


# ---- the fixtures and the engine option ----


@pytest.mark.parametrize(
    "args, engines",
    [
        ((), [DEFAULT_RUNS]),
        (("--echo-engine=python",), ["python"]),
        pytest.param(("--echo-engine=both",), None, marks=pytest.mark.native),
    ],
    ids=["default", "python", "both"],
)
def test_echo_server_on_each_engine(
    pytester: pytest.Pytester, args: tuple[str, ...], engines: list[str] | None
) -> None:
    result = run(pytester, ROUNDTRIP, "-v", *args)
    if engines is None:  # both: one run per engine, ids saying which
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(
            ["*test_roundtrip[[]native[]] PASSED*", "*test_roundtrip[[]python[]] PASSED*"]
        )
        engines = ["native", "python"]
    else:
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["*test_roundtrip PASSED*"])
    assert engines_used(pytester) == engines


def engines_used(pytester: pytest.Pytester) -> list[str]:
    found = sorted(p.name.removeprefix("engine-") for p in pytester.path.glob("engine-*"))
    for p in pytester.path.glob("engine-*"):
        p.unlink()
    return found


@pytest.mark.native  # both engines
def test_ini_setting_and_the_option_overriding_it(pytester: pytest.Pytester) -> None:
    pytester.makeini("[pytest]\necho_engine = python\n")
    run(pytester, ROUNDTRIP).assert_outcomes(passed=1)
    assert engines_used(pytester) == ["python"]
    run(pytester, ROUNDTRIP, "--echo-engine=both").assert_outcomes(passed=2)
    assert engines_used(pytester) == ["native", "python"]
    run(pytester, ROUNDTRIP, "--echo-engine=native").assert_outcomes(passed=1)
    assert engines_used(pytester) == ["native"]


def test_auto_follows_pyecho_engine(pytester: pytest.Pytester, monkeypatch) -> None:
    """--echo-engine=auto (the default) is the engine that runs: forced to
    python by PYECHO_ENGINE, as the API's engine="auto" is."""
    monkeypatch.setenv("PYECHO_ENGINE", "python")
    result = run(pytester, ROUNDTRIP, "--echo-engine=auto")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pyecho fixtures: echo engine python"])
    assert engines_used(pytester) == ["python"]
    monkeypatch.setenv("PYECHO_ENGINE", "turbo")
    result = run(pytester, ROUNDTRIP)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*PYECHO_ENGINE must be one of auto, native, python*"])


def test_bad_engine_values_are_usage_errors(pytester: pytest.Pytester) -> None:
    result = run(pytester, ROUNDTRIP, "--echo-engine=turbo")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--echo-engine: invalid choice: 'turbo'*"])
    pytester.makeini("[pytest]\necho_engine = turbo\n")
    result = run(pytester, ROUNDTRIP)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*echo_engine must be one of auto, native, python, both; got 'turbo'*"]
    )


@pytest.mark.native  # both engines
def test_both_leaves_other_tests_and_explicit_choices_alone(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import pytest

        def test_plain():
            pass

        @pytest.mark.echo_server(engine="python")
        def test_marker_engine(echo_server):
            assert echo_server.engine == "python"

        @pytest.mark.parametrize("echo_engine", ["python"])
        def test_own_parametrize(echo_server, echo_engine):
            assert echo_server.engine == "python"

        def test_factory(echo_server_factory, echo_engine):
            assert echo_server_factory().engine == echo_engine
        """,
        "-v",
        "--echo-engine=both",
    )
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(
        [
            "*test_plain PASSED*",
            "*test_marker_engine PASSED*",
            "*test_own_parametrize[[]python[]] PASSED*",
            "*test_factory[[]native[]] PASSED*",
            "*test_factory[[]python[]] PASSED*",
        ]
    )


def test_marker_settings(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import socket
        import pytest

        pytestmark = pytest.mark.echo_server(mode="line", quit_word="bye")

        def test_module_marker(echo_server):
            assert echo_server.mode == "line"
            with socket.create_connection(echo_server.server_address, timeout=10) as s:
                s.sendall(b"a\\nbye\\nlost\\n")
                assert s.makefile("rb").read() == b"a\\n"  # EOF after the quit word
            assert echo_server.wait_for_events("close")[0].reason == "quit"

        @pytest.mark.echo_server(mode="seed", max_clients=1)
        def test_nearest_marker_wins(echo_server):
            assert echo_server.mode == "seed"
            assert echo_server.config.quit_word == b"bye"  # from the module's marker
            assert echo_server.config.max_clients == 1

        @pytest.mark.echo_server(colour="blue")
        def test_unknown_keyword(echo_server):
            pass

        @pytest.mark.echo_server("line")
        def test_positional(echo_server):
            pass
        """,
    )
    result.assert_outcomes(passed=2, errors=2)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_unknown_keyword*",
            "@pytest.mark.echo_server: TypeError: *unexpected keyword argument 'colour'",
            "*ERROR at setup of test_positional*",
            "@pytest.mark.echo_server: TypeError: keyword arguments only (mode='line', ...), "
            "not ('line',)",
        ],
        consecutive=False,
    )


def test_factory_servers_are_all_closed(pytester: pytest.Pytester) -> None:
    done = pytester.path / "addresses"
    result = run(
        pytester,
        f"""
        import pyecho

        def test_many(echo_server_factory):
            a = echo_server_factory(mode="seed")
            b = echo_server_factory(engine="python", record=False)
            c = echo_server_factory(("127.0.0.1", 0), mode="line", max_line=10)
            assert (a.mode, b.engine, b.server_address, c.config.max_line) == (
                "seed", "python", b.engine_address, 10)
            for s, echo in ((a, b"hi"), (b, b"hi\\n"), (c, b"hi\\n")):
                with pyecho.EchoClient(s.server_address, mode=s.mode, timeout=10) as client:
                    assert client.echo(b"hi\\n") == echo
            addresses = [a.server_address, a.engine_address, b.server_address, c.server_address]
            open({str(done)!r}, "w").write(repr(addresses))
        """,
    )
    result.assert_outcomes(passed=1)
    for address in eval(done.read_text()):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5).close()
    wait_for(lambda: not pyecho_threads(), what="the servers' and taps' threads to end")


# ---- UDP and faults ----

UDP = """
    import socket

    import pytest

    import pyecho


    def test_udp_roundtrip(udp_echo_server, echo_engine):
        server = udp_echo_server
        assert (server.transport, server.engine) == ("udp", echo_engine)
        assert server.server_address == server.engine_address  # no relay for UDP
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            for data in (b"ping", b"", b"x" * 60000):
                s.sendto(data, server.server_address)
                assert s.recv(65536) == data
        assert (server.stats.datagrams_in, server.stats.datagrams_out) == (3, 3)
        assert server.events == []
        with pytest.raises(RuntimeError, match="received is for TCP"):
            server.received
        open("engine-" + echo_engine, "w").close()


    @pytest.mark.udp_echo_server(udp_rate_per_source=1)
    def test_drops_are_events(udp_echo_server):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", 0))
            for _ in range(3):
                s.sendto(b"x", udp_echo_server.server_address)
            (drop,) = udp_echo_server.wait_for_events("drop", reason="rate_source")
            assert (drop.peer, drop.count) == (s.getsockname(), 1)
        with pytest.raises(ValueError, match="reason must be one of guard, rate_source"):
            udp_echo_server.wait_for_events("drop", reason="quit")


    @pytest.mark.udp_echo_server(faults=pyecho.Faults(drop=1.0))
    def test_every_datagram_lost(udp_echo_server):
        with pyecho.EchoClient(
            udp_echo_server.server_address, transport="udp", timeout=0.2
        ) as client:
            with pytest.raises(TimeoutError, match="did not answer within 0.2 s"):
                client.echo(b"hello?")
        assert udp_echo_server.wait_for_events("drop", reason="fault")[0].count == 1


    def test_factory_over_udp(echo_server_factory):
        with pytest.raises(ValueError, match="record=True needs TCP"):
            echo_server_factory(transport="udp", record=True)
        with pytest.raises(ValueError, match="check_leaks=True needs TCP"):
            echo_server_factory(transport="udp", check_leaks=True)
        server = echo_server_factory(transport="udp", udp_guard=False)
        assert server.config.udp_guard is False and "udp" in repr(server)


    @pytest.mark.udp_echo_server(mode="line")
    def test_a_tcp_setting(udp_echo_server):
        pass
"""


@pytest.mark.parametrize("engine", ["native", "python"])
def test_udp_echo_server(pytester: pytest.Pytester, engine: str) -> None:
    result = run(pytester, UDP, f"--echo-engine={engine}")
    result.assert_outcomes(passed=4, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_a_tcp_setting*",
            "*ValueError: mode does not apply to UDP*",
        ],
        consecutive=False,
    )
    assert engines_used(pytester) == [engine]
    wait_for(lambda: not pyecho_threads(), what="the servers' threads to end")


@pytest.mark.native  # both engines
def test_udp_echo_server_runs_on_both_engines(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import pytest

        def test_udp(udp_echo_server, echo_engine):
            assert udp_echo_server.engine == echo_engine

        @pytest.mark.udp_echo_server(engine="python")
        def test_marker_engine(udp_echo_server):
            assert udp_echo_server.engine == "python"

        @pytest.mark.udp_echo_server(engine="python")
        def test_marker_engine_and_tcp(udp_echo_server, echo_server, echo_engine):
            assert echo_server.engine == echo_engine  # this one still varies
        """,
        "-v",
        "--echo-engine=both",
    )
    result.stdout.fnmatch_lines(
        [
            "*test_udp[[]native[]] PASSED*",
            "*test_udp[[]python[]] PASSED*",
            "*test_marker_engine PASSED*",
            "*test_marker_engine_and_tcp[[]native[]] PASSED*",
            "*test_marker_engine_and_tcp[[]python[]] PASSED*",
        ]
    )


FAULTS_MARKER = """
    import socket

    import pytest

    import pyecho


    @pytest.mark.echo_server(faults=pyecho.Faults(latency=0.2))
    def test_a_short_timeout_fires(echo_server):
        with pyecho.EchoClient(echo_server.server_address, mode="raw", timeout=0.05) as c:
            with pytest.raises(TimeoutError):
                c.echo(b"ping")
        with socket.create_connection(echo_server.server_address, timeout=5) as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"  # a patient client gets it
        assert echo_server.faults.latency == 0.2


    @pytest.mark.udp_echo_server(faults=pyecho.Faults(latency=0.2))
    def test_over_udp(udp_echo_server):
        address = udp_echo_server.server_address
        with pyecho.EchoClient(address, transport="udp", timeout=0.05) as c:
            with pytest.raises(TimeoutError):
                c.echo(b"ping")
        with pyecho.EchoClient(address, transport="udp", timeout=5) as c:
            assert c.echo(b"pong") == b"pong"


    @pytest.mark.udp_echo_server(faults=pyecho.Faults(rate=1000))
    def test_a_tcp_fault_over_udp(udp_echo_server):
        pass
"""


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["native", "python"])
def test_faults_by_marker(pytester: pytest.Pytester, engine: str) -> None:
    result = run(pytester, FAULTS_MARKER, f"--echo-engine={engine}")
    result.assert_outcomes(passed=2, errors=1)
    result.stdout.fnmatch_lines(["*ValueError: rate does not apply to UDP*"])


def readme_example(heading: str) -> str:
    """The first Python block of a README section."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split(f"\n## {heading}\n")[1].split("\n## ")[0]
    return section.split("```python\n")[1].split("```")[0]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["native", "python"])
def test_the_readmes_bad_network_example(pytester: pytest.Pytester, engine: str) -> None:
    pytester.makepyfile(test_my_client=readme_example("Testing your client against a bad network"))
    result = pytester.runpytest("-p", "no:cacheprovider", f"--echo-engine={engine}")
    result.assert_outcomes(passed=5)


# ---- failures ----


def test_teardown_closes_everything_when_the_test_fails(pytester: pytest.Pytester) -> None:
    done = pytester.path / "address"
    threads, fds = pyecho_threads(), open_fds()
    assert threads == []
    result = run(
        pytester,
        f"""
        import socket

        def test_fails_with_a_connection_open(echo_server, echo_server_factory):
            echo_server_factory(engine="python")
            with socket.create_connection(echo_server.server_address, timeout=10) as s:
                s.sendall(b"x")
                assert s.recv(1) == b"x"
                open({str(done)!r}, "w").write(repr(echo_server.server_address))
                assert False, "the user's own failure"
        """,
    )
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: the user's own failure*"])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(eval(done.read_text()), timeout=5).close()
    wait_for(lambda: not pyecho_threads(), what="the servers' and taps' threads to end")
    assert open_fds() == fds


def test_on_event_error_fails_the_test_clearly(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import socket
        import pytest

        def explode(event):
            if event.kind == "open":
                raise ValueError("on_event exploded")

        @pytest.mark.echo_server(on_event=explode)
        def test_broken(echo_server):
            socket.create_connection(echo_server.server_address, timeout=10).close()
            echo_server.wait_for_events("close")

        @pytest.mark.echo_server(on_event=explode)
        def test_broken_and_failing(echo_server):
            socket.create_connection(echo_server.server_address, timeout=10).close()
            echo_server.wait_for_events("close")
            assert 1 == 2
        """,
        "-rA",
    )
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*_ test_broken _*",
            "on_event raised ValueError: on_event exploded; stopped serving "
            f"(<EchoServerFixture {DEFAULT_RUNS} raw on *>)",
            "Traceback (most recent call last):",
            "*ValueError: on_event exploded",
        ],
        consecutive=False,
    )
    # The test's own failure stays the failure; what the server saw is added.
    assert "assert 1 == 2" in out
    result.stdout.fnmatch_lines(
        ["*- Captured echo_server call -*", "on_event raised ValueError: on_event exploded; *"],
        consecutive=True,
    )


@pytest.mark.slow
def test_check_leaks(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import socket
        import pytest

        seen = []

        # The test ends at once: the server may not even have accepted the
        # connection yet, and must still find it.
        @pytest.mark.parametrize("record", [True, False])
        def test_leaks(echo_server_factory, request, record):
            server = echo_server_factory(check_leaks=True, record=record)
            s = socket.create_connection(server.server_address, timeout=10)
            request.addfinalizer(s.close)

        @pytest.mark.echo_server(check_leaks=True, max_clients=1)
        def test_leaks_at_capacity(echo_server, request):
            s = socket.create_connection(echo_server.server_address, timeout=10)
            request.addfinalizer(s.close)

        @pytest.mark.echo_server(check_leaks=True, on_event=seen.append)
        def test_closes(echo_server):
            socket.create_connection(echo_server.server_address, timeout=10).close()

        def test_the_check_was_invisible():
            # Its probe connection had no events, not even for on_event.
            assert [(e.kind, e.conn_id) for e in seen] == [("open", 1), ("close", 1)]

        def test_leaks_unchecked(echo_server, request):
            s = socket.create_connection(echo_server.server_address, timeout=10)
            request.addfinalizer(s.close)
        """,
    )
    result.assert_outcomes(passed=3, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*_ test_leaks?True? _*",
            "check_leaks: connections still open: #1 from 127.0.0.1:* "
            "(after 2 s; <EchoServerFixture native raw on *>)",
            "*_ test_leaks?False? _*",
            "check_leaks: connections still open: #1 from 127.0.0.1:* (after 2 s; *)",
            "*_ test_leaks_at_capacity _*",
            "check_leaks: connections still open: #1 from 127.0.0.1:* (after 2 s; *)",
        ],
        consecutive=False,
    )


@pytest.mark.slow
def test_wait_helpers_fail_with_what_they_saw(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import socket

        def test_events(echo_server):
            echo_server.wait_for_events("close", timeout=0.2)

        def test_received(echo_server):
            with socket.create_connection(echo_server.server_address, timeout=10) as s:
                s.sendall(b"abc")
                assert echo_server.wait_for_received(b"bc") == 1
                echo_server.wait_for_received(b"xyz", timeout=0.2)

        def test_still_open(echo_server):
            with socket.create_connection(echo_server.server_address, timeout=10):
                echo_server.wait_for_events("open")
                echo_server.assert_connections_closed(timeout=0.2)
        """,
    )
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*AssertionError: 0 close events, not 1; events: [] (after 0.2 s; *)",
            "*AssertionError: no connection received b'xyz': {1: b'abc'} (after 0.2 s; *)",
            "*AssertionError: connections still open: #1 from 127.0.0.1:* (after 0.2 s; *)",
        ],
        consecutive=False,
    )


# ---- xdist and typing (subprocesses) ----


@pytest.mark.slow
def test_xdist_workers_get_their_own_servers(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    log = pytester.path / "log"
    log.mkdir()
    pytester.makepyfile(
        test_inner=f"""
        import os
        import pytest
        import pyecho

        @pytest.mark.parametrize("n", range(4))
        def test_echo(echo_server, n):
            with pyecho.EchoClient(echo_server.server_address, mode="raw", timeout=10) as c:
                assert c.echo(b"%d" % n) == b"%d" % n
            name = f"{{os.environ['PYTEST_XDIST_WORKER']}}-{{n}}-{{echo_server.engine}}"
            open(os.path.join({str(log)!r}, name), "w").write(repr(echo_server.server_address))
        """
    )
    # --dist each: every worker runs every test (with the default load
    # scheduling, a slow-starting worker may get none of them).
    result = pytester.runpytest_subprocess(
        "-n", "2", "--dist", "each", "--echo-engine=both", "-pno:cacheprovider"
    )
    result.assert_outcomes(passed=16)
    names = [p.name for p in log.iterdir()]
    assert len(names) == 16
    assert {n.split("-")[0] for n in names} == {"gw0", "gw1"}


TYPED_USER_TESTS = """
    from __future__ import annotations

    import socket

    import pytest

    import pyecho
    from pyecho.pytest_plugin import EchoServerFactory, EchoServerFixture, Transcript


    def test_roundtrip(echo_server: EchoServerFixture) -> None:
        host, port = echo_server.server_address
        with socket.create_connection((host, port), timeout=10) as s:
            s.sendall(b"ping")
            assert s.recv(4) == b"ping"
        closed: list[pyecho.Event] = echo_server.wait_for_events("close")
        sent: Transcript = echo_server.received[closed[0].conn_id]
        assert sent == b"ping" and sent.total == 4 and not sent.truncated
        stats: pyecho.Stats = echo_server.stats
        assert stats.closed["peer"] == 1


    @pytest.mark.echo_server(mode="line")
    def test_factory(
        echo_server: EchoServerFixture, echo_server_factory: EchoServerFactory
    ) -> None:
        other = echo_server_factory(mode="seed", engine="python")
        assert (echo_server.mode, other.mode) == ("line", "seed")
        echo_server.assert_connections_closed()


    def test_udp(udp_echo_server: EchoServerFixture) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(10)
            s.sendto(b"ping", udp_echo_server.server_address)
            assert s.recv(100) == b"ping"
        stats: pyecho.Stats = udp_echo_server.stats
        assert stats.datagrams_in == 1
"""


def mypy(path: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    """mypy --strict as a user runs it. An editable install is a meta path
    hook mypy cannot follow: then point it at the source tree and keep the
    package's own errors out, as mypy does for an installed package."""
    env = dict(os.environ)
    root = Path(pyecho.__file__).parent.parent
    args = ["--strict", "--cache-dir", str(cwd / ".mypy_cache"), str(path)]
    if not any(root == Path(p) for p in site.getsitepackages()):
        env["MYPYPATH"] = str(root)
        (cwd / "mypy.ini").write_text("[mypy]\n[mypy-pyecho.*]\nfollow_imports = silent\n")
        args = ["--config-file", str(cwd / "mypy.ini"), *args]
    return subprocess.run(
        [sys.executable, "-m", "mypy", *args], cwd=cwd, env=env, capture_output=True, text=True
    )


@pytest.mark.slow
def test_mypy_strict_on_a_user_test_file(pytester: pytest.Pytester) -> None:
    pytest.importorskip("mypy", reason="mypy is not installed")
    path = pytester.makepyfile(test_typed=textwrap.dedent(TYPED_USER_TESTS))
    result = mypy(path, pytester.path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Success: no issues found in 1 source file" in result.stdout
    # The types are real ones, not Any: a wrong use is caught.
    misuse = "\n\ndef bad(s: EchoServerFixture) -> int:\n    return s.events\n"
    path.write_text(path.read_text() + misuse)
    result = mypy(path, pytester.path)
    assert result.returncode == 1
    assert 'Incompatible return value type (got "list[Event]", expected "int")' in result.stdout
    # And the file is a passing test file.
    path.write_text(textwrap.dedent(TYPED_USER_TESTS))
    pytester.runpytest("-p", "no:cacheprovider").assert_outcomes(passed=3)


README = Path(__file__).resolve().parent.parent / "README.md"


def readme_blocks() -> list[str]:
    """Every Python block of the README, in order."""
    return re.findall(r"^```python\n(.*?)^```", README.read_text(), re.S | re.M)


@pytest.mark.slow
def test_the_readmes_python_passes_mypy_strict(pytester: pytest.Pytester) -> None:
    """What a user copies from the README type-checks as it is."""
    pytest.importorskip("mypy", reason="mypy is not installed")
    blocks = readme_blocks()
    assert len(blocks) >= 4  # the API's two, the plugin's two
    for i, block in enumerate(blocks):
        path = pytester.makepyfile(**{f"readme_block_{i}": block})
        result = mypy(path, pytester.path)
        assert result.returncode == 0, f"README block {i}:\n{block}\n{result.stdout}"


@pytest.mark.slow
def test_the_readmes_plugin_example_gives_its_transcript(pytester: pytest.Pytester) -> None:
    """The README's first plugin example, run as its transcript says (both
    engines): the outcomes and the failures it shows."""
    example = readme_example("Use it in your tests")
    section = README.read_text().split("\n## Use it in your tests\n")[1].split("\n## ")[0]
    transcript = section.split("```\n", 2)[2].split("```")[0]  # the block after the example
    pytester.makepyfile(test_my_client=example)
    result = pytester.runpytest("-p", "no:cacheprovider", "-v", "--echo-engine=both")
    result.assert_outcomes(passed=4, failed=2)
    shown = [line for line in transcript.splitlines() if line.startswith("test_my_client.py::")]
    assert len(shown) == 6
    result.stdout.fnmatch_lines([line.split("  ")[0].replace("[", "[[]") + "*" for line in shown])
    assert "========================= 2 failed, 4 passed in" in transcript
    assert "check_leaks: connections still open: #1 from 127.0.0.1:" in transcript


# ---- the recording relay, on both engines (no inner session) ----
# Each scenario runs with the relay (record=True) and without it: the client
# and the server must see the same either way.


@pytest.fixture(params=[True, False], ids=["relay", "bare"])
def record(request: pytest.FixtureRequest) -> bool:
    return bool(request.param)


def test_relay_half_close_large_flow_and_peer(engine: str, record: bool) -> None:
    data = os.urandom(3 * 1024 * 1024 + 7)
    with EchoServerFixture(
        (LOOPBACK, 0), engine=engine, record=record, record_limit=1000
    ).start() as server:
        assert (server.server_address != server.engine_address) == record
        with socket.create_connection(server.server_address, timeout=30) as s:
            me = s.getsockname()
            sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)))
            sender.start()
            echo = s.makefile("rb").read()  # until the server's EOF
            sender.join()
        assert echo == data
        server.wait_for_events("close")
        opened, closed = server.events
        assert (opened.kind, opened.peer, closed.reason, closed.peer) == ("open", me, "peer", me)
        if record:
            sent = server.received[closed.conn_id]
            assert sent == data[:1000] and sent.total == len(data) and sent.truncated
        else:
            with pytest.raises(RuntimeError, match="received needs record=True"):
                server.received  # noqa: B018
    server.check()


def test_relay_passes_resets_and_server_closes(engine: str, record: bool) -> None:
    with EchoServerFixture(
        (LOOPBACK, 0), engine=engine, record=record, idle_timeout=0.3
    ).start() as server:
        # The client resets: the server sees a reset.
        s = socket.create_connection(server.server_address, timeout=10)
        s.sendall(b"x")
        assert s.recv(1) == b"x"
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()
        assert server.wait_for_events("close")[0].reason == "reset"
        # The server closes an idle connection: the client sees EOF.
        with socket.create_connection(server.server_address, timeout=10) as s:
            assert s.recv(1) == b""
        assert server.wait_for_events("close", reason="idle")
    server.check()


def test_relay_client_gone_while_echo_is_owed(engine: str, record: bool) -> None:
    # The client closes with echo unread: its kernel answers with a reset,
    # which the server sees. (Regression: the relay's thread died on the
    # second socket of a pipe closed earlier in the same batch of events.)
    with EchoServerFixture((LOOPBACK, 0), engine=engine, record=record).start() as server:
        for n in range(1, 6):
            with socket.create_connection(server.server_address, timeout=10) as s:
                s.sendall(b"y" * (1024 * 1024))
                assert select.select([s], [], [], 10)[0]  # echo waiting, unread
            closed = server.wait_for_events("close", count=n, timeout=10)
            assert [e.reason for e in closed] == ["reset"] * n
        assert server.stats.open == 0
    server.check()


def test_a_failing_relay_fails_the_check(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: object) -> None:
        raise RuntimeError("relay bug")

    monkeypatch.setattr("pyecho._tap.Tap._accept", broken)
    # check_leaks too: its probe then finds the relay's listener closed.
    with EchoServerFixture((LOOPBACK, 0), check_leaks=True).start() as server:
        # Never accepted: the failed relay closed its listener with us in the
        # backlog (the reset can come before connect() returns).
        with (
            pytest.raises(ConnectionResetError),
            socket.create_connection(server.server_address, timeout=10) as s,
        ):
            s.recv(1)
        wait_for(lambda: server.errors != [])
        with pytest.raises(AssertionError) as failure:
            server.check()
    assert str(failure.value).startswith(
        "the recording relay failed with RuntimeError: relay bug; stopped relaying "
        f"(<EchoServerFixture {DEFAULT_RUNS} raw on"
    )
    assert 'raise RuntimeError("relay bug")' in str(failure.value)
    server.check()  # told once


def test_relay_rejected_connection_sees_eof(engine: str, record: bool) -> None:
    with EchoServerFixture(
        (LOOPBACK, 0), engine=engine, record=record, max_clients=1
    ).start() as server:
        with socket.create_connection(server.server_address, timeout=10) as first:
            server.wait_for_events("open")
            with socket.create_connection(server.server_address, timeout=10) as second:
                assert second.recv(1) == b""  # accepted, then closed at once
            first.sendall(b"ok")
            assert first.recv(2) == b"ok"
        server.wait_for_events("close")
        assert server.stats.rejected == 1
        if record:
            assert list(server.received) == [1]  # the rejected one never opened
    server.check()


def test_relay_many_clients_at_once(engine: str) -> None:
    # Each connection's events and transcript name the right client, however
    # the server's accepts and the relay's connects interleave.
    n = 40
    with EchoServerFixture((LOOPBACK, 0), engine=engine).start() as server:
        for address in (server.server_address, server.engine_address):
            with socket.socket() as s, pytest.raises(OSError, match="in use"):
                s.bind(address)  # both ports are really bound
        sent: dict[tuple[str, int], bytes] = {}
        echoed: dict[tuple[str, int], bytes] = {}
        lock = threading.Lock()

        def client(i: int) -> None:
            data = os.urandom(1000 + i)
            with socket.create_connection(server.server_address, timeout=30) as s:
                me = s.getsockname()
                s.sendall(data)
                s.shutdown(socket.SHUT_WR)
                echo = s.makefile("rb").read()
            with lock:
                sent[me], echoed[me] = data, echo

        threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert echoed == sent and len(sent) == n
        closed = server.wait_for_events("close", count=n, timeout=30)
        assert {e.reason for e in closed} == {"peer"}
        opened = {e.conn_id: e.peer for e in server.events if e.kind == "open"}
        assert sorted(opened.values()) == sorted(sent)
        assert {c: sent[peer] for c, peer in opened.items()} == server.received
    server.check()


def test_relay_out_of_descriptors_backs_off(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # EMFILE from accept(): the relay leaves the connection in the backlog
    # and tries again a little later (not in a busy loop), then serves it.
    calls: list[float] = []
    accept = socket.socket.accept

    def failing_accept(self: socket.socket) -> tuple[socket.socket, object]:
        if threading.current_thread().name == "pyecho-tap":
            calls.append(time.monotonic())
            if len(calls) <= 3:
                raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))
        return accept(self)

    monkeypatch.setattr(socket.socket, "accept", failing_accept)
    with EchoServerFixture((LOOPBACK, 0), engine=engine).start() as server:
        with socket.create_connection(server.server_address, timeout=10) as s:
            s.sendall(b"late")
            assert s.recv(4) == b"late"
    assert calls[3] - calls[0] >= 3 * ACCEPT_PAUSE * 0.9  # paused each time
    server.check()


def test_relay_out_of_descriptors_for_the_server_side(
    engine: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # EMFILE making the relay's socket to the server: that client is reset,
    # the next one is served.
    from pyecho._tap import Tap

    real = Tap._open_upstream
    failures = [OSError(errno.EMFILE, os.strerror(errno.EMFILE))]

    def open_upstream(self: Tap) -> socket.socket:
        if failures:
            raise failures.pop()
        return real(self)

    monkeypatch.setattr(Tap, "_open_upstream", open_upstream)
    with EchoServerFixture((LOOPBACK, 0), engine=engine).start() as server:
        with (
            pytest.raises(ConnectionResetError),
            socket.create_connection(server.server_address, timeout=10) as s,
        ):
            s.recv(1)
        with socket.create_connection(server.server_address, timeout=10) as s:
            s.sendall(b"next")
            assert s.recv(4) == b"next"
        assert [e.kind for e in server.wait_for_events("close")] == ["close"]
        assert server.stats.accepted == 1
    server.check()


def test_fixture_class_checks_its_own_settings() -> None:
    with pytest.raises(ValueError, match="record_limit"):
        EchoServerFixture((LOOPBACK, 0), record_limit=-1)
    with pytest.raises(TypeError, match="on_event"):
        EchoServerFixture((LOOPBACK, 0), on_event=3)  # type: ignore[arg-type]
    with EchoServerFixture((LOOPBACK, 0)) as server:
        with pytest.raises(ValueError, match="kind must be"):
            server.wait_for_events("opened")
        with pytest.raises(ValueError, match="reason must be"):
            server.wait_for_events("close", reason="bored")


# ---- rough edges (issue 15, item 17) ----


@pytest.mark.native  # both engines, whichever is the default
@pytest.mark.parametrize("default", ["native", "python"])
def test_echo_engine_is_the_markers_engine(pytester: pytest.Pytester, default: str) -> None:
    """echo_engine names the engine the test's servers run on: the marker's,
    when every server fixture used takes its engine from its marker and the
    test makes no servers of its own (else the option's, which those use)."""
    other = "python" if default == "native" else "native"
    result = run(
        pytester,
        f"""
        import pytest

        @pytest.mark.echo_server(engine="{other}")
        def test_marker(echo_server, echo_engine):
            assert echo_server.engine == echo_engine == "{other}"

        @pytest.mark.udp_echo_server(engine="{other}")
        @pytest.mark.echo_server(engine="{other}")
        def test_markers_agree(echo_server, udp_echo_server, echo_engine):
            assert echo_engine == "{other}"

        @pytest.mark.udp_echo_server(engine="{other}")
        def test_one_without(echo_server, udp_echo_server, echo_engine):
            assert echo_server.engine == echo_engine == "{default}"

        @pytest.mark.echo_server(engine="{other}")
        def test_with_the_factory(echo_server, echo_server_factory, echo_engine):
            assert echo_server_factory().engine == echo_engine == "{default}"

        @pytest.mark.echo_server(engine="{default}")
        def test_marker_says_the_default(echo_server, echo_engine):
            assert echo_engine == "{default}"
        """,
        f"--echo-engine={default}",
    )
    result.assert_outcomes(passed=5)


def test_udp_received_says_it_is_tcp_only(engine: str) -> None:
    with EchoServerFixture((LOOPBACK, 0), transport="udp", engine=engine) as server:
        with pytest.raises(RuntimeError) as e:
            _ = server.received
    assert str(e.value).startswith("received is for TCP: a UDP server has no recording relay")
    assert "record=False" not in str(e.value)


def test_bad_marker_arguments_are_one_line(pytester: pytest.Pytester) -> None:
    result = run(
        pytester,
        """
        import pytest

        @pytest.mark.echo_server(record_limit=-1)
        def test_fixture_setting(echo_server):
            pass

        @pytest.mark.udp_echo_server(mode="line")
        def test_engine_setting(udp_echo_server):
            pass

        def test_factory(echo_server_factory):
            echo_server_factory(record_limit=-1)
        """,
    )
    result.assert_outcomes(failed=1, errors=2)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*ERROR at setup of test_fixture_setting*",
            "@pytest.mark.echo_server: ValueError: record_limit must be an int >= 0, got -1",
            "*ERROR at setup of test_engine_setting*",
            "@pytest.mark.udp_echo_server: ValueError: mode does not apply to UDP: *",
            "*_ test_factory _*",
        ],
        consecutive=False,
    )
    # A traceback through the half-made fixture shows it, not an error of its repr().
    assert "raised in repr()" not in out
    assert "self = <EchoServerFixture (not made)>" in out
    assert "During handling" not in out


def test_on_event_raising_again_is_told_once(pytester: pytest.Pytester, engine: str) -> None:
    """on_event raising the same error for the open and then for the close
    (at shutdown) is one failure, with one traceback."""
    result = run(
        pytester,
        """
        import socket
        import pytest

        def explode(event):
            raise ValueError("on_event exploded")

        @pytest.mark.echo_server(on_event=explode)
        def test_broken(echo_server):
            socket.create_connection(echo_server.server_address, timeout=10).close()
            echo_server.wait_for_events("close")
            assert len(echo_server.errors) == 1
        """,
        f"--echo-engine={engine}",
        # No short summary: without a terminal to fit it to (CI), it repeats
        # the whole failure message, traceback included.
        "-rN",
    )
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert out.count("Traceback (most recent call last)") == 1
    assert out.count("\non_event raised ValueError: on_event exploded; stopped serving") == 1


def test_the_plugins_own_connection_is_not_in_received(engine: str) -> None:
    """assert_connections_closed() connects through the relay to see the
    server settled: that connection is no client's and not in received."""
    with EchoServerFixture((LOOPBACK, 0), engine=engine) as server:
        server.start()
        with socket.create_connection(server.server_address, timeout=10) as s:
            s.sendall(b"x")
            assert s.recv(1) == b"x"
        server.assert_connections_closed()
        (closed,) = server.wait_for_events("close")
        assert server.received == {closed.conn_id: b"x"}


# ---- TLS ----


def test_a_tls_server_in_an_empty_folder_on_both_engines(pytester: pytest.Pytester) -> None:
    """@pytest.mark.echo_server(tls=True) with --echo-engine=both, the
    factory with TLS(cert="expired"), and record=True refused with the reason."""
    pytest.importorskip("trustme")
    # In a subprocess: an in-process inner session may import cryptography
    # (under trustme) afresh, which its Rust half refuses to mix with the first.
    pytester.makepyfile(
        test_inner=textwrap.dedent(
            """
        import socket, ssl
        import pytest
        import pyecho

        @pytest.mark.echo_server(tls=True)
        def test_tls_roundtrip(echo_server, echo_engine):
            assert echo_server.engine == echo_engine
            ctx = echo_server.tls.client_context()
            assert echo_server.tls.ca_file.endswith(".pem")
            with socket.create_connection(echo_server.server_address) as raw:
                with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                    s.sendall(b"over tls")
                    assert s.recv(100) == b"over tls"
            echo_server.wait_for_events("close", reason="peer")

        def test_factory_with_an_expired_certificate(echo_server_factory):
            server = echo_server_factory(tls=pyecho.TLS(cert="expired"))
            with socket.create_connection(server.server_address) as raw:
                with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
                    server.tls.client_context().wrap_socket(raw, server_hostname="localhost")

        @pytest.mark.echo_server(tls=True, record=True)
        def test_record_is_refused(echo_server):
            pass
        """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--echo-engine=both")
    result.assert_outcomes(passed=4, errors=2)
    result.stdout.fnmatch_lines(["*record=True with tls: the recording relay would see only*"])


@pytest.mark.slow  # an inner pytest run making certificates; the TLS fixtures are quick above
def test_the_readmes_tls_example(pytester: pytest.Pytester) -> None:
    pytest.importorskip("trustme")
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    section = readme.split("\n## Use it in your tests\n")[1].split("\n### TLS\n")[1]
    pytester.makepyfile(test_my_tls=section.split("```python\n")[1].split("```")[0])
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--echo-engine=both")
    result.assert_outcomes(passed=4)
