"""What the server echoes for the bytes it received: the executable spec.

The twin of ``csrc/framing.c`` (``echo_scan``); docs/PROTOCOL.md says the
same in prose, and tests/test_framing.py fuzzes the two against each other.
"""

from __future__ import annotations

from ._config import Config


def _is_quit(cfg: Config, msg: bytes) -> bool:
    return cfg.quit_word is not None and msg == cfg.quit_word


def _is_quit_line(cfg: Config, line: bytes) -> bool:
    body = line[:-1]  # the "\n"
    if body.endswith(b"\r"):
        body = body[:-1]
    return _is_quit(cfg, body)


def _scan_seed(cfg: Config, buf: bytes) -> tuple[int, bool]:
    """Seed mode: the whole read is one message, minus one trailing newline."""
    msg = len(buf) - 1 if buf.endswith(b"\n") else len(buf)
    if _is_quit(cfg, buf[:msg]):
        return 0, True
    return msg, False


def _scan_lines(cfg: Config, cont: bool, buf: bytes) -> tuple[int, bool, bool]:
    """Line mode: whole lines of at most max_line bytes (terminator included)
    are echoed as they complete; a longer line goes out in max_line pieces,
    and its tail is never taken for the quit word."""
    pos = 0
    while pos < len(buf):
        window = min(len(buf) - pos, cfg.max_line)
        nl = buf.find(b"\n", pos, pos + window)
        if nl >= 0:
            end = nl + 1
            if not cont and _is_quit_line(cfg, buf[pos:end]):
                return pos, cont, True
            cont = False
            pos = end
        elif window == cfg.max_line:
            cont = True  # a full piece of a long line
            pos += window
        else:
            break  # a partial line: wait for more
    return pos, cont, False


def scan(cfg: Config, cont: bool, buf: bytes) -> tuple[int, bool, bool]:
    """Return (emit, cont, quit) for the bytes ``buf`` not yet echoed.

    ``emit`` leading bytes are echoed now; in line mode the rest stay pending
    (always fewer than max_line). ``cont`` is True while inside a line longer
    than max_line. ``quit``: the quit word ends the connection after the
    emitted prefix; everything after it is dropped.
    """
    if cfg.mode == "line":
        return _scan_lines(cfg, cont, buf)
    if cfg.mode == "seed":
        emit, quit_ = _scan_seed(cfg, buf)
        return emit, cont, quit_
    return len(buf), cont, False


def is_quit_message(cfg: Config, message: bytes) -> bool:
    """Would the server take this whole message (line mode: one line with its
    terminator; seed mode: one read) for the quit word?"""
    if cfg.mode == "line":
        return (
            message.endswith(b"\n") and len(message) <= cfg.max_line and _is_quit_line(cfg, message)
        )
    if cfg.mode == "seed":
        return len(message) <= cfg.bufsize and _scan_seed(cfg, message)[1]
    return False
