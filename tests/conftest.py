"""Shared fixtures: every behaviour test runs against both engines."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable

import pytest

import pyecho

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


def pytest_report_header(config: pytest.Config) -> str:
    return f"pyecho {pyecho.__version__} from {os.path.dirname(pyecho.__file__)}"


@pytest.fixture(autouse=True, scope="session")
def _native_must_load() -> None:
    # A missing native library is a failed install, not a reason to skip.
    pyecho._native.load()


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
    return len(os.listdir("/proc/self/fd"))


# A run under tools/sanitize.sh preloads ASan: its quarantine and shadow
# memory make resident-memory figures meaningless, so memory bounds are not
# asserted then (everything else is).
SANITIZED = "libasan" in os.environ.get("LD_PRELOAD", "")


def pytest_configure(config: pytest.Config) -> None:
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
    # Every test parametrized with engine="native" uses the C core.
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("engine") == "native":
            item.add_marker(pytest.mark.native)


def raise_fd_limit(needed: int) -> None:
    """Raise the soft descriptor limit to the hard one; skip, saying why, if
    even that is below ``needed``."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"needs {needed} open files, the hard limit is {hard}")
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def scaled(name: str, default: int) -> int:
    """A scale knob: the environment variable ``name`` or the CI default."""
    return int(os.environ.get(name, default))
