"""The Python engine's portability layer (pyecho/_pycompat.py): what it
picks on this system, and what it says past the select() selector's limit.
The Python engine's whole tier also runs with the select() selector forced
(PYECHO_SELECTOR=select) and as on Windows (tests/simulate): .ci/run."""

from __future__ import annotations

import errno
import os
import selectors
import socket
import sys

import pytest

from conftest import linux_only, raise_fd_limit
from pyecho import _pycompat
from pyecho._pyloop import READ, Loop


@pytest.mark.parametrize("name, cls", [("select", "SelectSelector"), ("poll", "PollSelector")])
def test_pyecho_selector_picks_the_selector(
    monkeypatch: pytest.MonkeyPatch, name: str, cls: str
) -> None:
    if not hasattr(selectors, cls):
        pytest.skip(f"no {cls} on this system")
    monkeypatch.setenv("PYECHO_SELECTOR", name)
    loop = Loop()
    try:
        assert type(loop._sel).__name__ == cls
    finally:
        loop.close()


def test_an_unknown_selector_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYECHO_SELECTOR", "iocp")
    with pytest.raises(ValueError, match=r"PYECHO_SELECTOR='iocp': this system's selectors are "):
        _pycompat.make_selector()


def test_without_it_the_default_selector_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYECHO_SELECTOR", raising=False)
    assert _pycompat.selector_class() is selectors.DefaultSelector


def test_the_platform_constants() -> None:
    assert _pycompat.MSG_NOSIGNAL == getattr(socket, "MSG_NOSIGNAL", 0)
    assert _pycompat.MSG_DONTWAIT == getattr(socket, "MSG_DONTWAIT", 0)
    assert {errno.EINPROGRESS, errno.EWOULDBLOCK} <= _pycompat.CONNECT_PENDING
    assert len(_pycompat.LINGER_RESET) == (4 if sys.platform == "win32" else 8)


def test_past_the_select_limit_serving_stops_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    """select() cannot watch a descriptor of FD_SETSIZE (1024) or more on
    Linux; Windows' limit is 512 sockets. Either way the error names it."""
    linux_only("placing a socket at descriptor 1100")
    raise_fd_limit(1200)
    monkeypatch.setenv("PYECHO_SELECTOR", "select")
    a, b = socket.socketpair()
    high = os.dup2(a.fileno(), 1100)
    sock = socket.socket(fileno=high)
    loop = Loop()
    try:
        loop.io_start(sock, READ, lambda ready: None)
        with pytest.raises(_pycompat.SelectLimitError) as e:
            loop.run_once(0)
        assert e.value.errno == errno.EMFILE
        assert f"watches at most {_pycompat.SELECT_LIMIT} sockets" in str(e.value)
        assert "set max_clients below it" in str(e.value)
    finally:
        loop.io_stop(sock)
        loop.close()
        for s in (sock, a, b):
            s.close()
