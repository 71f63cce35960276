"""Shared fixtures: every behaviour test runs against both engines.

Environment variables (issue 17):

- PYECHO_REQUIRE_NATIVE=1: a native engine that does not load fails the run
  (CI's main run). Unset, on an install without it (a pure-Python install),
  the native tests skip, all with one reason, and the rest run.
- PYECHO_SIMULATE=windows with PYTHONPATH=tests/simulate: what Windows'
  CPython lacks is removed before pyecho is imported (tests/simulate/).
- PYECHO_SELECTOR=select|poll|...: the Python engine's selector
  (pyecho/_pycompat.py).
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING

import pytest

import pyecho

if TYPE_CHECKING:
    from _pytest.mark.structures import ParameterSet

ENGINES = list(pyecho.ENGINES)
LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"


def _no_ipv6() -> str:
    """Why this machine has no IPv6 loopback, or "" if it has one."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind((LOOPBACK6, 0))
    except OSError as e:
        return f"no IPv6 loopback on this machine: {e}"
    return ""


NO_IPV6 = _no_ipv6()
needs_ipv6 = pytest.mark.skipif(bool(NO_IPV6), reason=NO_IPV6 or "-")
# The server addresses a scenario that looks at addresses runs over.
HOSTS = [pytest.param(LOOPBACK, id="ipv4"), pytest.param(LOOPBACK6, id="ipv6", marks=needs_ipv6)]


SIMULATE = os.environ.get("PYECHO_SIMULATE", "")
REQUIRE_NATIVE = os.environ.get("PYECHO_REQUIRE_NATIVE", "") not in ("", "0")


def _native_missing() -> str:
    """Why the native engine does not load, or "" if it does."""
    try:
        pyecho._native.load()
    except pyecho.NativeUnavailableError as e:
        return f"no native engine in this install: {e}"
    return ""


NATIVE_MISSING = _native_missing()
# The engines this install runs.
RUNNABLE = [e for e in ENGINES if e == "python" or not NATIVE_MISSING]


def pytest_report_header(config: pytest.Config) -> list[str]:
    from pyecho import _auto, _pycompat

    lines = [f"pyecho {pyecho.__version__} from {os.path.dirname(pyecho.__file__)}"]
    lines.append(
        f"pyecho {_auto.describe()}; Python engine selector "
        f"{_pycompat.selector_class().__name__}" + (f"; simulating {SIMULATE}" if SIMULATE else "")
    )
    return lines


@pytest.fixture(autouse=True, scope="session")
def _native_must_load() -> None:
    # With PYECHO_REQUIRE_NATIVE=1 (CI) a missing native library is a failed
    # install, not a reason to skip.
    if REQUIRE_NATIVE:
        pyecho._native.load()


@pytest.fixture(autouse=True)
def _skip_native_if_missing(request: pytest.FixtureRequest) -> None:
    if NATIVE_MISSING and request.node.get_closest_marker("native") is not None:
        pytest.skip(NATIVE_MISSING)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    # pytest reports a fixture's skip at each test: the native tests' skips
    # all at one place instead, so that -ra says them in one line, not 500.
    report = yield
    longrepr = report.longrepr
    if NATIVE_MISSING and report.skipped and isinstance(longrepr, tuple):
        if NATIVE_MISSING in str(longrepr[2]):
            report.longrepr = (__file__, 0, longrepr[2])
    return report


def _check_simulation() -> None:
    if not SIMULATE:
        return
    if SIMULATE != "windows":
        raise pytest.UsageError(f"PYECHO_SIMULATE must be windows; got {SIMULATE!r}")
    if hasattr(select, "poll") or hasattr(socket, "MSG_NOSIGNAL"):
        raise pytest.UsageError(
            "PYECHO_SIMULATE=windows is not in effect: put tests/simulate first on "
            "PYTHONPATH (PYTHONPATH=tests/simulate), so that it runs before pyecho is imported"
        )


# ---- Linux-only test infrastructure: skips, saying why, elsewhere ----

LINUX = sys.platform.startswith("linux")


def linux_only(what: str) -> None:
    """Skip the test, saying why, unless this is Linux (/proc, unshare...)."""
    if not LINUX:
        pytest.skip(f"{what} is Linux-only test infrastructure (this is {sys.platform})")


def needs_fork() -> None:
    if not hasattr(os, "fork"):
        pytest.skip(f"os.fork() is not available on {sys.platform}")


def quick_if(quick: bool, *values: object, id: str | None = None) -> ParameterSet:
    """One case of ``pytest.mark.parametrize`` (``values``: one per argument
    name), marked slow unless ``quick``: the full suite runs every case, the
    quick tier (``-m "not slow"``) the representative ones, which must still
    cover each behaviour on both engines."""
    return pytest.param(*values, id=id, marks=() if quick else pytest.mark.slow)


# Every (server, client) engine pair: the pairs of one engine are quick, the
# mixed ones (each engine already checked in the quick tier) are slow.
ENGINE_PAIRS = [quick_if(s == c, s, c) for s in ENGINES for c in ENGINES]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return request.param


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0, what: str = "") -> None:
    """Poll predicate until true; fail the test after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.005)


class Recorder:
    """Collects server events (thread-safe) without the peer's port."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.events: list[pyecho.Event] = []

    def __call__(self, event: pyecho.Event) -> None:
        with self._lock:
            self.events.append(event)

    def summary(self) -> list[tuple]:
        with self._lock:
            return [(e.kind, e.conn_id, e.peer[0], e.reason) for e in self.events]


def open_fds() -> int:
    """This process's open descriptors (/proc/self/fd: Linux only)."""
    linux_only("counting descriptors in /proc/self/fd")
    return len(os.listdir("/proc/self/fd"))


# A run under tools/sanitize.sh preloads ASan: its quarantine and shadow
# memory make resident-memory figures meaningless, so memory bounds are not
# asserted then (everything else is).
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def pytest_configure(config: pytest.Config) -> None:
    _check_simulation()
    config.addinivalue_line(
        "markers",
        "native: runs the C core (tools/sanitize.sh selects these with -m native)",
    )
    config.addinivalue_line(
        "markers",
        "slow: takes seconds (scale, soak, benchmark, sanitizer build); "
        '`pytest -m "not slow"` is the quick run',
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every test parametrized with engine="native" (or a pair of engines
    # with it) uses the C core.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and any(
            v == "native" or (isinstance(v, tuple) and "native" in v)
            for v in callspec.params.values()
        ):
            item.add_marker(pytest.mark.native)


def raise_fd_limit(needed: int) -> None:
    """Raise the soft descriptor limit to the hard one; skip, saying why, if
    even that is below ``needed``."""
    try:
        import resource
    except ImportError:
        pytest.skip(f"the resource module (descriptor limits) is not available on {sys.platform}")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def scaled(name: str, default: int) -> int:
    """A scale knob: the environment variable ``name`` or the CI default."""
    return int(os.environ.get(name, default))
