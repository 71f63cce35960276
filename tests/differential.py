"""Run one scenario over {native, python} server x {native, python} client and
check that the four transcripts are identical. The server listens on
127.0.0.1 unless told another host (``host="::1"``: the same scenario over
IPv6)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import pytest

import pyecho
from conftest import ENGINES, LOOPBACK, NATIVE_MISSING, Recorder, wait_for

COMBOS = [(s, c) for s in ENGINES for c in ENGINES]

ClientFactory = Callable[..., pyecho.EchoClient]
Scenario = Callable[[pyecho.EchoServer, ClientFactory], Any]

CLIENT_KEYS = ("transport", "mode", "quit_word", "bufsize", "max_line")


def run_one(
    server_engine: str,
    client_engine: str,
    scenario: Scenario,
    *,
    host: str = LOOPBACK,
    ordered_events: bool = True,
    **server_kw: Any,
) -> dict[str, Any]:
    """Run scenario against a fresh server on ``host``; its transcript, events
    and stats. The scenario's ``client(to=None, address=None, **kw)``
    connects to the server's address, or to host ``to`` at the server's port,
    or to ``address``."""
    rec = Recorder()
    connected = 0
    client_kw = {k: server_kw[k] for k in CLIENT_KEYS if k in server_kw}

    def client(
        to: str | None = None, *, address: tuple[str, int] | None = None, **kw: Any
    ) -> pyecho.EchoClient:
        nonlocal connected
        opts = {"engine": client_engine, "timeout": 20, **client_kw, **kw}
        if to is not None:
            address = (to, server.server_address[1])
        c = pyecho.EchoClient(address or server.server_address, **opts)
        assert c.engine == client_engine  # over TLS too: no silent fallback
        connected += 1
        return c

    with pyecho.EchoServer((host, 0), engine=server_engine, on_event=rec, **server_kw) as server:
        server.start()
        transcript = scenario(server, client)
        if server.transport == "tcp":  # UDP has no connections to wait for
            wait_for(
                lambda: (
                    server.stats.accepted + server.stats.rejected >= connected
                    and server.stats.open == 0
                ),
                20,
                "every connection to be accepted and closed",
            )
        server.shutdown()
        stats = asdict(server.stats)
    events = rec.summary()
    if not ordered_events:  # concurrent clients: accept order is not fixed
        events = sorted(Counter((kind, host, reason) for kind, _, host, reason in events).items())
    return {"transcript": transcript, "events": events, "stats": stats}


def run_matrix(scenario: Scenario, **kw: Any) -> dict[str, Any]:
    """All four combinations; asserts they match and returns the transcript.
    Skips, with the reason, on an install without the native engine."""
    if NATIVE_MISSING:
        pytest.skip(NATIVE_MISSING)
    results = {combo: run_one(*combo, scenario, **kw) for combo in COMBOS}
    reference = results[COMBOS[0]]
    for combo, result in results.items():
        assert result == reference, (
            f"server={combo[0]} client={combo[1]} differs from "
            f"server={COMBOS[0][0]} client={COMBOS[0][1]}:\n{result}\n!=\n{reference}"
        )
    return reference
