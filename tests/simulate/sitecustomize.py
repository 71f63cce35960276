"""PYECHO_SIMULATE=windows: remove from this interpreter what Windows'
CPython lacks, before anything imports pyecho, so the Python engine's tests
run as on Windows as far as the standard library goes (issue 17).

Put this folder first on PYTHONPATH: Python imports ``sitecustomize`` at
startup, in every interpreter, so the subprocesses the tests start (the
CLI, the pytest plugin's inner runs) are simulated too::

    PYECHO_SIMULATE=windows PYTHONPATH=tests/simulate pytest -m "not native"

tests/conftest.py refuses to run with PYECHO_SIMULATE set but not in effect.
What it cannot simulate: Windows' own behaviour (error codes, the 512-socket
select() limit, SO_EXCLUSIVEADDRUSE): see README.md, "Platforms".
"""

from __future__ import annotations

import os

if os.environ.get("PYECHO_SIMULATE", "") == "windows":
    import select
    import selectors
    import socket

    for name in [n for n in dir(select) if n.startswith(("POLL", "EPOLL"))]:
        delattr(select, name)
    for name in ("poll", "epoll", "devpoll", "kqueue", "kevent"):
        if hasattr(select, name):
            delattr(select, name)
    # recvmsg()/sendmsg() are missing too; their CMSG_* helpers stand for them.
    for name in (
        "MSG_NOSIGNAL",
        "MSG_DONTWAIT",
        "SO_REUSEPORT",
        "AF_UNIX",
        "CMSG_LEN",
        "CMSG_SPACE",
    ):
        if hasattr(socket, name):
            delattr(socket, name)
    for name in ("PollSelector", "EpollSelector", "DevpollSelector", "KqueueSelector"):
        if hasattr(selectors, name):
            delattr(selectors, name)
    selectors.DefaultSelector = selectors.SelectSelector  # type: ignore[misc]

    def _tcp_socketpair(
        family: int = socket.AF_INET, type: int = socket.SOCK_STREAM, proto: int = 0
    ) -> tuple[socket.socket, socket.socket]:
        """socket.socketpair() as Windows' CPython does it, over loopback TCP
        (Linux's socketpair() takes only AF_UNIX, which Windows lacks)."""
        host = "::1" if family == socket.AF_INET6 else "127.0.0.1"
        with socket.socket(family, type, proto) as listener:
            listener.bind((host, 0))
            listener.listen(1)
            a = socket.socket(family, type, proto)
            try:
                a.connect(listener.getsockname())
                b, _ = listener.accept()
            except BaseException:
                a.close()
                raise
        return a, b

    socket.socketpair = _tcp_socketpair
