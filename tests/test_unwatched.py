"""A connection the server deliberately does not watch (accept_delay,
close_delay) costs no CPU, even when its peer resets it meanwhile: an fd
with nothing to wait for is not polled at all (csrc/poller.h), so its error
is not reported over and over. The reset is noticed when the wait ends."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from procserver import ProcServer

from conftest import wait_for

_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
WAIT = 3.0  # the fault's delay, seconds
WINDOW = 1.0  # how long the idle CPU is measured, seconds
# A loop that spins burns about WINDOW; an idle one, nearly nothing. The
# bound leaves room for a loaded CI machine (stats replies, scheduling).
MAX_CPU = 0.25


def _reset(sock: socket.socket) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST)
    sock.close()


@pytest.mark.slow  # waits out a 3 s delay
@pytest.mark.parametrize("fault", ["accept_delay", "close_delay"])
def test_a_reset_connection_left_unwatched_costs_no_cpu(engine: str, fault: str) -> None:
    with ProcServer(engine, faults={fault: WAIT}) as server:
        sock = socket.create_connection(server.address, timeout=5)
        wait_for(lambda: server.stats()["accepted"] == 1, what="the connection accepted")
        if fault == "close_delay":
            sock.sendall(b"x")
            assert sock.recv(1) == b"x"
            sock.shutdown(socket.SHUT_WR)  # the server's close now waits
            time.sleep(0.1)
        _reset(sock)
        time.sleep(0.1)  # the reset arrives; the server is not watching
        cpu0, t0 = server.cpu_seconds(), time.monotonic()
        time.sleep(WINDOW)
        used, elapsed = server.cpu_seconds() - cpu0, time.monotonic() - t0
        assert elapsed < WAIT - 1, "the window must end before the wait does"
        assert used < MAX_CPU, f"the server used {used:.2f} s of CPU in {elapsed:.2f} s"
        # When the wait ends, the connection is closed and counted.
        wait_for(lambda: server.stats()["open"] == 0, WAIT + 5, "the connection closed")
        stats = server.quit()
    assert stats["accepted"] == 1
    assert sum(stats["closed"].values()) == 1
