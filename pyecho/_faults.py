"""Faults: a server that misbehaves on purpose, for testing network clients.

``Faults`` says what the server does to its echo: hold it (latency, jitter),
pace it (rate, slice), cut it (limit, stall_after), end connections early
(reset_after, refuse) or late (close_delay, accept_delay), and lose or
repeat datagrams (drop, duplicate). The names and units are toxiproxy's
where it has them. docs/PROTOCOL.md defines each exactly; both engines act
on the same integers (``FaultsInts``), so they make the same choices for
the same seed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from typing import Any, NamedTuple

from ._config import Setting, _setting, check_applies, to_ms

_MAX_SECONDS = 4_000_000  # the C core's uint32 milliseconds
_MAX_BYTES = 1 << 50
PPM = 1_000_000  # probabilities go to the engines in parts per million


def _delay(help: str, transports: tuple[str, ...] = ("tcp",)) -> Any:
    return _setting(
        "seconds",
        0.0,
        "server",
        help,
        lower=0,
        upper=_MAX_SECONDS,
        off="none",
        off_value=0.0,
        transports=transports,
    )


def _chance(help: str, transports: tuple[str, ...]) -> Any:
    return _setting("probability", 0.0, "server", help, transports=transports)


@dataclass(frozen=True)
class Faults:
    """What the server does to its echo, on purpose. All off by default.

    Times are in seconds (whole milliseconds), sizes in bytes, rates in bytes
    per second, chances from 0 to 1. TCP and UDP take different faults:
    giving one to the other is a ValueError.
    """

    latency: float = _delay("hold each chunk of echo this long before sending it", ("tcp", "udp"))
    jitter: float = _delay(
        "add a uniform random -jitter..+jitter to each latency (order is kept)", ("tcp", "udp")
    )
    rate: int | None = _setting(
        "rate",
        None,
        "server",
        "send at most this many bytes of echo per second per connection",
        lower=1,
        upper=_MAX_BYTES,
        off="no limit",
        transports=("tcp",),
    )
    slice: int | None = _setting(
        "bytes",
        None,
        "server",
        "send echo in pieces of at most this many bytes",
        lower=1,
        upper=(1 << 32) - 1,
        off="whole",
        transports=("tcp",),
    )
    slice_delay: float = _delay("wait this long between pieces (needs slice)")
    limit: int | None = _setting(
        "bytes",
        None,
        "server",
        "close the connection after this many bytes of echo (the client sees EOF)",
        lower=0,
        upper=_MAX_BYTES,
        off="none",
        transports=("tcp",),
    )
    reset_after: float | None = _setting(
        "seconds",
        None,
        "server",
        "reset the connection (RST) this long after it opened",
        lower=0,
        upper=_MAX_SECONDS,
        off="never",
        transports=("tcp",),
    )
    stall_after: int | None = _setting(
        "bytes",
        None,
        "server",
        "after this many bytes of echo, stall: echo nothing more and stop reading",
        lower=0,
        upper=_MAX_BYTES,
        off="never",
        transports=("tcp",),
    )
    close_delay: float = _delay(
        "wait this long before a close the server decides (quit, EOF, limit)"
    )
    accept_delay: float = _delay("leave a new connection unserved this long")
    refuse: float = _chance("chance a new connection is reset at once", ("tcp",))
    drop: float = _chance("chance a datagram is not echoed", ("udp",))
    duplicate: float = _chance("chance a datagram is echoed twice", ("udp",))
    # TLS servers only (tls=...): what the handshake suffers.
    handshake_delay: float = _delay("TLS: wait this long before answering the ClientHello")
    handshake_stall: bool = _setting(
        "flag",
        False,
        "server",
        "TLS: never answer the ClientHello; the connection stays open (input is read and dropped)",
        transports=("tcp",),
    )
    handshake_reset: float = _chance(
        "TLS: chance the connection is reset when its ClientHello arrives", ("tcp",)
    )
    seed: int | None = _setting(
        "count",
        None,
        "server",
        "seed of the random choices (jitter, refuse, drop, duplicate, handshake_reset); by "
        "default a random one, shown by server.faults (and the command line) so a run can be "
        "repeated",
        lower=0,
        upper=(1 << 64) - 1,
        off="random",
    )

    def __post_init__(self) -> None:
        for s in FAULTS:
            object.__setattr__(self, s.name, s.check(getattr(self, s.name)))
        if self.slice_delay and self.slice is None:
            raise ValueError("slice_delay needs slice: the size of the pieces it separates")

    def check_for(self, transport: str) -> Faults:
        """self, or ValueError if a fault does not apply to the transport."""
        check_applies(self, FAULTS, transport)
        return self

    @property
    def handshake(self) -> bool:
        """Does a handshake fault act (they need a TLS server)?"""
        return bool(self.handshake_delay or self.handshake_stall or self.handshake_reset)

    @property
    def active(self) -> bool:
        """Does any fault act (the seed alone does nothing)?"""
        return replace(self, seed=None) != Faults()

    def seeded(self) -> Faults:
        """self with a seed: a random one if it had none."""
        if self.seed is not None:
            return self
        return replace(self, seed=int.from_bytes(os.urandom(8), "little"))


FAULTS: tuple[Setting, ...] = tuple(
    replace(f.metadata["setting"], name=f.name) for f in fields(Faults)
)


class FaultsInts(NamedTuple):
    """Faults as both engines take them: the fields of the C echo_faults."""

    latency_ms: int
    jitter_ms: int
    rate: int
    slice: int
    slice_delay_ms: int
    limit: int
    reset_after_ms: int
    stall_after: int
    close_delay_ms: int
    accept_delay_ms: int
    refuse_ppm: int
    drop_ppm: int
    duplicate_ppm: int
    seed: int
    handshake_delay_ms: int
    handshake_stall: int
    handshake_reset_ppm: int


def faults_ints(f: Faults) -> FaultsInts:
    """The integers of a seeded Faults (-1: off, for the optional ones)."""
    assert f.seed is not None

    def off(value: int | None) -> int:
        return -1 if value is None else value

    return FaultsInts(
        latency_ms=to_ms(f.latency),
        jitter_ms=to_ms(f.jitter),
        rate=f.rate or 0,
        slice=f.slice or 0,
        slice_delay_ms=to_ms(f.slice_delay),
        limit=off(f.limit),
        reset_after_ms=-1 if f.reset_after is None else to_ms(f.reset_after),
        stall_after=off(f.stall_after),
        close_delay_ms=to_ms(f.close_delay),
        accept_delay_ms=to_ms(f.accept_delay),
        refuse_ppm=round(f.refuse * PPM),
        drop_ppm=round(f.drop * PPM),
        duplicate_ppm=round(f.duplicate * PPM),
        seed=f.seed,
        handshake_delay_ms=to_ms(f.handshake_delay),
        handshake_stall=int(f.handshake_stall),
        handshake_reset_ppm=round(f.handshake_reset * PPM),
    )
