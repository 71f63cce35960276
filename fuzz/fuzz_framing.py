#!/usr/bin/env python3
"""Differential fuzzing of the framing: the C ``echo_scan`` (csrc/framing.c,
through cffi) against the Python ``pyecho._framing.scan``.

Every input picks a configuration and a stream; the stream is scanned whole
and then in chunks (held bytes first, as the servers read it), and each call
must give the same (emit, cont, quit) in both engines. Line framing must also
not depend on the chunking. The input layout is the one fuzz/fuzz_scan.c
(libFuzzer, C alone) uses, so fuzz/corpus/ seeds both:

    byte 0: mode (mod 3: raw, line, seed)
    byte 1: max_line = 1 + byte % 16, or 65536 for 255
    byte 2: quit word (mod 4: b"exit", b"\\r", None, b"e")
    byte 3: seed of the chunk sizes
    rest:   the stream

Run it (atheris, libFuzzer flags):

    python fuzz/fuzz_framing.py -max_total_time=60 "$(mktemp -d)" fuzz/corpus

The first directory receives new inputs; fuzz/corpus/ is only read.
tests/test_framing.py runs check_one() over the corpus and hypothesis inputs,
so the default test run covers the same comparison without atheris.
"""

from __future__ import annotations

import sys
from typing import Any

from pyecho import _native
from pyecho._config import MODES, make_config
from pyecho._framing import scan

QUIT_WORDS = (b"exit", b"\r", None, b"e")


def parse(data: bytes) -> tuple[Any, int, bytes] | None:
    """(Config, chunk seed, stream) for a fuzz input, None if too short."""
    if len(data) < 4:
        return None
    max_line = 65536 if data[1] == 255 else 1 + data[1] % 16
    cfg = make_config(mode=MODES[data[0] % 3], quit_word=QUIT_WORDS[data[2] % 4], max_line=max_line)
    return cfg, data[3], data[4:]


class _CScan:
    """echo_scan for one configuration."""

    def __init__(self, cfg: Any) -> None:
        self.ffi, self.lib = _native.load()
        self.ccfg = _native._CConfig(cfg)  # keeps the quit word alive
        self.cont = self.ffi.new("int *")
        self.quit = self.ffi.new("int *")

    def __call__(self, cont: bool, buf: bytes) -> tuple[int, bool, bool]:
        self.cont[0] = int(cont)
        emit = self.lib.echo_scan(
            self.ccfg.struct, self.cont, self.ffi.from_buffer(buf), len(buf), self.quit
        )
        return emit, bool(self.cont[0]), bool(self.quit[0])


def _both(c_scan: _CScan, cfg: Any, cont: bool, buf: bytes) -> tuple[int, bool, bool]:
    py = scan(cfg, cont, buf)
    c = c_scan(cont, buf)
    if c != py:
        raise AssertionError(
            f"C and Python framing differ: mode={cfg.mode} max_line={cfg.max_line} "
            f"quit_word={cfg.quit_word!r} cont={cont} buf={buf!r}: C {c} != Python {py}"
        )
    emit, _, _ = py
    if not 0 <= emit <= len(buf):
        raise AssertionError(f"emit {emit} outside the buffer of {len(buf)}")
    return py


def _chunks(seed: int, length: int) -> list[int]:
    """Chunk sizes from the same generator as fuzz/fuzz_scan.c."""
    sizes = []
    pos = 0
    while pos < length:
        seed = (seed * 1103515245 + 12345) & 0xFFFFFFFF
        n = min(1 + (seed >> 16) % 24, length - pos)
        sizes.append(n)
        pos += n
    return sizes


def check_one(data: bytes) -> None:
    """Raise AssertionError if the engines' framing differ on this input."""
    parsed = parse(data)
    if parsed is None:
        return
    cfg, seed, stream = parsed
    c_scan = _CScan(cfg)
    whole, _, whole_quit = _both(c_scan, cfg, False, stream)

    cont, held, out, quit_ = False, b"", 0, False
    for n in _chunks(seed, len(stream)):
        chunk, stream = stream[:n], stream[n:]
        buf = held + chunk if cfg.mode == "line" else chunk
        emit, cont, quit_ = _both(c_scan, cfg, cont, buf)
        out += emit
        if cfg.mode == "line":
            if quit_:
                break
            held = buf[emit:]
            if len(held) >= cfg.max_line:
                raise AssertionError(f"{len(held)} bytes held with max_line {cfg.max_line}")
    if cfg.mode == "line" and (out, quit_) != (whole, whole_quit):
        raise AssertionError(
            f"line framing depends on the chunking: whole gives {(whole, whole_quit)}, "
            f"chunks give {(out, quit_)}"
        )


def main() -> None:
    import atheris  # only the fuzzer needs it

    _native.load()  # fail now, not in the first input, if the C core is missing
    atheris.instrument_all()  # coverage of the Python framing guides the fuzzer
    atheris.Setup(sys.argv, check_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
